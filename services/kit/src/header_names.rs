//! The headers the mesh reads or writes on every call, as [`HeaderName`]
//! constants. A lookup by `&str` parses and validates the name on each call,
//! and an insert by `&str` copies a custom name into a fresh allocation; a
//! constant does neither. On the gateway's hot path that was about 6,000 of
//! 147,000 instructions per call (`bench/gateway/callgrind`).

use http::HeaderName;

use crate::correlation::{CORRELATION_ID_HEADER, GRPC_TIMEOUT_HEADER, REQUEST_ID_HEADER};

/// `x-correlation-id`: the call's correlation id, on every hop.
pub const CORRELATION_ID: HeaderName = HeaderName::from_static(CORRELATION_ID_HEADER);
/// `x-request-id`: accepted as the correlation id when that is absent.
pub const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
/// `grpc-timeout`: the caller's remaining deadline.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static(GRPC_TIMEOUT_HEADER);
/// `grpc-status`: the call's outcome, in the trailers (or the headers of a trailers-only response).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-status-details-bin`: the encoded `google.rpc.Status` with its details.
pub const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
/// `traceparent`: W3C trace context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_finds_what_was_inserted_by_text() {
        let mut headers = http::HeaderMap::new();
        for (text, name) in [
            ("x-correlation-id", CORRELATION_ID),
            ("x-request-id", REQUEST_ID),
            ("grpc-timeout", GRPC_TIMEOUT),
            ("grpc-status", GRPC_STATUS),
            ("grpc-status-details-bin", GRPC_STATUS_DETAILS),
            ("traceparent", TRACEPARENT),
        ] {
            headers.insert(text, http::HeaderValue::from_static("v"));
            assert_eq!(headers.get(&name).map(http::HeaderValue::as_bytes), Some(&b"v"[..]), "{text}");
            assert_eq!(name.as_str(), text);
        }
    }
}
