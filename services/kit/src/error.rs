//! The error model: every service error states its gRPC code and its
//! `google.rpc.ErrorInfo` reason, and this module — the only place that
//! builds a `tonic::Status` — turns it into one, with the correlation id.
//!
//! `Internal` errors reach the caller as a generic message; their full
//! `source()` chain is logged under the correlation id instead, so nothing
//! the caller should not see (a path, a credential in a URL) leaves the service.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::correlation;

/// A service error that knows how it looks on the wire.
pub trait RpcError: std::error::Error + Send + Sync + 'static {
    /// The gRPC status code.
    fn code(&self) -> Code;
    /// A stable `UPPER_SNAKE` reason for `ErrorInfo`, e.g. `KEY_TOO_LARGE`.
    fn reason(&self) -> &'static str;
    /// The `ErrorInfo` domain: the proto package, e.g. `mesh.cache.v1`.
    fn domain(&self) -> &'static str;
    /// The request field at fault, reported as a `BadRequest` violation
    /// for `INVALID_ARGUMENT`.
    fn field(&self) -> Option<&'static str> {
        None
    }
    /// When the caller may retry, reported as `RetryInfo`.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// Further `ErrorInfo.metadata` pairs, e.g. the operation and server a
    /// call failed on. Empty values are dropped, and inside a call
    /// `correlation_id` is the call's own. Values reach the caller: they must
    /// hold no secret.
    fn metadata(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Builds the status for `error`: code, message, `ErrorInfo` with the
/// correlation id, plus `BadRequest` and `RetryInfo` when they apply.
pub fn to_status<E: RpcError + ?Sized>(error: &E) -> Status {
    let correlation_id = correlation::current_correlation_id().map(|id| id.to_string()).unwrap_or_default();
    let code = error.code();
    let message = if code == Code::Internal || code == Code::Unknown {
        tracing::error!(correlation_id = %correlation_id, error = %ErrorChain(error), reason = error.reason(), "internal error");
        format!("internal error; quote correlation id {correlation_id} when reporting it")
    } else {
        error.to_string()
    };
    let mut metadata: HashMap<String, String> = error
        .metadata()
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    if !correlation_id.is_empty() {
        metadata.insert("correlation_id".to_owned(), correlation_id.clone());
    }
    let mut details = ErrorDetails::with_error_info(error.reason(), error.domain(), metadata);
    if code == Code::InvalidArgument
        && let Some(field) = error.field()
    {
        details.add_bad_request_violation(field, error.to_string());
    }
    if let Some(retry_after) = error.retry_after() {
        details.set_retry_info(Some(retry_after));
    }
    let mut status = Status::with_error_details(code, message, details);
    if let Ok(value) = correlation_id.parse() {
        status.metadata_mut().insert(correlation::CORRELATION_ID_HEADER, value);
    }
    status
}

/// The same error as a `google.rpc.Status` message, for per-item results of
/// batch calls.
pub fn to_status_proto<E: RpcError + ?Sized>(error: &E) -> tonic_types::pb::Status {
    let status = to_status(error);
    tonic_types::pb::Status::decode(status.details()).unwrap_or_else(|_| tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    })
}

/// The `google.rpc.Status` of a successful item.
#[must_use]
pub fn ok_status_proto() -> tonic_types::pb::Status {
    tonic_types::pb::Status { code: Code::Ok as i32, message: String::new(), details: Vec::new() }
}

/// A status for a request the mesh cannot attribute to a service error,
/// e.g. a call to a service nobody serves; used by the gateway.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// No route for the requested service.
    #[error("service `{service}` is not served by this mesh")]
    UnknownService { service: String },
    /// The path is not `/<package>.<Service>/<Method>`.
    #[error("`{path}` is not a gRPC method path")]
    MalformedPath { path: String },
    /// The upstream could not be reached or broke the call.
    #[error("service `{service}` is unavailable")]
    UpstreamUnavailable { service: String },
    /// The deadline passed before the upstream answered.
    #[error("deadline exceeded calling `{service}`")]
    DeadlineExceeded { service: String },
}

impl RpcError for EdgeError {
    fn code(&self) -> Code {
        match self {
            Self::UnknownService { .. } | Self::MalformedPath { .. } => Code::Unimplemented,
            Self::UpstreamUnavailable { .. } => Code::Unavailable,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::UnknownService { .. } => "UNKNOWN_SERVICE",
            Self::MalformedPath { .. } => "MALFORMED_PATH",
            Self::UpstreamUnavailable { .. } => "UPSTREAM_UNAVAILABLE",
            Self::DeadlineExceeded { .. } => "DEADLINE_EXCEEDED",
        }
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }
}

/// Displays an error and its `source()` chain on one line.
struct ErrorChain<'a, E: ?Sized>(&'a E);

impl<E: std::error::Error + ?Sized> std::fmt::Display for ErrorChain<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlation::{CallContext, CorrelationId};

    #[derive(Debug, thiserror::Error)]
    enum SampleError {
        #[error("key is empty")]
        EmptyKey,
        #[error("disk on fire at /secret/path")]
        Disk,
    }

    impl RpcError for SampleError {
        fn code(&self) -> Code {
            match self {
                Self::EmptyKey => Code::InvalidArgument,
                Self::Disk => Code::Internal,
            }
        }
        fn reason(&self) -> &'static str {
            match self {
                Self::EmptyKey => "EMPTY_KEY",
                Self::Disk => "STORAGE_FAILED",
            }
        }
        fn domain(&self) -> &'static str {
            "mesh.sample.v1"
        }
        fn field(&self) -> Option<&'static str> {
            Some("key")
        }
    }

    fn in_call<T>(f: impl FnOnce() -> T) -> T {
        let context = CallContext { correlation_id: CorrelationId::parse("corr-1").unwrap(), deadline: None };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(correlation::scope(context, async { f() }))
    }

    #[test]
    fn status_carries_reason_domain_correlation_id_and_field() {
        let status = in_call(|| to_status(&SampleError::EmptyKey));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "key is empty");
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "EMPTY_KEY");
        assert_eq!(info.domain, "mesh.sample.v1");
        assert_eq!(info.metadata["correlation_id"], "corr-1");
        assert_eq!(details.bad_request().expect("bad request").field_violations[0].field, "key");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("server vm1 is unreachable")]
    struct ContextError;

    impl RpcError for ContextError {
        fn code(&self) -> Code {
            Code::Unavailable
        }
        fn reason(&self) -> &'static str {
            "UNREACHABLE"
        }
        fn domain(&self) -> &'static str {
            "mesh.sample.v1"
        }
        fn metadata(&self) -> Vec<(&'static str, String)> {
            vec![("server_id", "vm1".to_owned()), ("empty", String::new()), ("correlation_id", "forged".to_owned())]
        }
    }

    #[test]
    fn extra_metadata_joins_error_info_without_overriding_the_correlation_id() {
        let status = in_call(|| to_status(&ContextError));
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.metadata["server_id"], "vm1");
        assert_eq!(info.metadata["correlation_id"], "corr-1");
        assert!(!info.metadata.contains_key("empty"));
    }

    #[test]
    fn internal_errors_hide_their_message() {
        let status = in_call(|| to_status(&SampleError::Disk));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/secret/path"));
        assert!(status.message().contains("corr-1"));
    }

    #[test]
    fn per_item_status_keeps_the_details() {
        let item = in_call(|| to_status_proto(&SampleError::EmptyKey));
        assert_eq!(item.code, Code::InvalidArgument as i32);
        assert!(!item.details.is_empty());
    }
}
