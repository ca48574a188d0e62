//! Correlation ids and the per-call context every server and client shares.
//!
//! [`CorrelationLayer`] wraps every server (and the gateway): it accepts the
//! caller's `x-correlation-id` (else `x-request-id`, else mints a UUID v7),
//! records the incoming `grpc-timeout` as a deadline, makes both available
//! to the handler through the [`CallContext`] task-local and the request
//! extensions, normalises the request header so it is forwarded as is, and
//! echoes the id in the response headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::header_names;

/// The header that carries the correlation id on every hop.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";
/// Accepted from callers that only set the common request-id header.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// gRPC's deadline header.
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

/// Longest id accepted from a caller; longer ones are replaced, so a caller
/// cannot make every log line and error arbitrarily large.
const MAX_CORRELATION_ID_BYTES: usize = 128;

/// An opaque id that follows one request through every service.
///
/// Held as the header value it travels as: an id that comes in is validated
/// and its bytes reused (no copy), a minted one is written once, and every
/// hop's header is a reference-counted clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CorrelationId(HeaderValue);

/// Whether `raw` is 1..=128 visible ASCII characters.
fn acceptable(raw: &[u8]) -> bool {
    !raw.is_empty() && raw.len() <= MAX_CORRELATION_ID_BYTES && raw.iter().all(u8::is_ascii_graphic)
}

impl CorrelationId {
    /// Mints a new time-ordered id (UUID v7).
    #[must_use]
    pub fn mint() -> Self {
        let mut buffer = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer);
        Self(HeaderValue::from_str(text).expect("a UUID is visible ASCII"))
    }

    /// Accepts a caller's id if it is 1..=128 visible ASCII characters.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        acceptable(raw.as_bytes()).then(|| Self(HeaderValue::from_str(raw).expect("visible ASCII is a header value")))
    }

    /// Accepts a header's value as [`CorrelationId::parse`] does, reusing its bytes.
    #[must_use]
    pub fn from_header_value(value: &HeaderValue) -> Option<Self> {
        acceptable(value.as_bytes()).then(|| {
            let mut value = value.clone();
            // The id is forwarded and echoed as an ordinary header, whatever the caller marked it.
            value.set_sensitive(false);
            Self(value)
        })
    }

    /// Reads `x-correlation-id`, else `x-request-id`.
    #[must_use]
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        [header_names::CORRELATION_ID, header_names::REQUEST_ID]
            .iter()
            .filter_map(|name| headers.get(name))
            .find_map(Self::from_header_value)
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever admitted, so the text is always there.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value, ready to send.
    #[must_use]
    pub(crate) fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a handler knows about the call it serves.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The call's correlation id.
    pub correlation_id: CorrelationId,
    /// When the caller stops waiting, from its `grpc-timeout`.
    pub deadline: Option<Instant>,
}

impl CallContext {
    /// The time left before the deadline, if there is one.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

tokio::task_local! {
    static CALL_CONTEXT: CallContext;
}

/// The context of the call being served on this task, if any.
#[must_use]
pub fn current() -> Option<CallContext> {
    CALL_CONTEXT.try_with(Clone::clone).ok()
}

/// The correlation id of the call being served on this task, if any.
#[must_use]
pub fn current_correlation_id() -> Option<CorrelationId> {
    CALL_CONTEXT.try_with(|c| c.correlation_id.clone()).ok()
}

/// Runs `future` with `context` as the current call context; used by
/// servers, and by work spawned on behalf of a call.
pub async fn scope<F: Future>(context: CallContext, future: F) -> F::Output {
    CALL_CONTEXT.scope(context, future).await
}

/// Parses a `grpc-timeout` value (`100m`, `5S`, `1H`): 1 to 8 ASCII digits
/// and a unit, as the gRPC spec has it; anything else (a sign, a space, a
/// non-ASCII character) is no timeout at all.
#[must_use]
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    // Split as bytes: the last character of a caller's text may be wider than
    // one byte, and a `str` split inside it panics (found by fuzz/grpc_headers).
    let (digits, unit) = raw.as_bytes().split_last().map(|(unit, digits)| (digits, *unit))?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Only ASCII digits, so both the text and the number are valid.
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value, rounding up to keep at
/// most 8 digits as the spec requires.
#[must_use]
pub fn format_grpc_timeout(timeout: Duration) -> String {
    let (amount, unit) = grpc_timeout_parts(timeout);
    format!("{amount}{unit}")
}

/// [`format_grpc_timeout`] as a header value, without the intermediate
/// `String`: the gateway writes one on every call.
#[must_use]
pub fn grpc_timeout_value(timeout: Duration) -> HeaderValue {
    use std::io::Write as _;
    const CAPACITY: usize = 9; // at most 8 digits and the unit
    let (amount, unit) = grpc_timeout_parts(timeout);
    let mut buffer = [0u8; CAPACITY];
    let mut unwritten = &mut buffer[..];
    write!(unwritten, "{amount}{unit}").expect("8 digits and a unit fit in 9 bytes");
    let len = CAPACITY - unwritten.len();
    HeaderValue::from_bytes(&buffer[..len]).expect("digits and a unit letter are a valid header value")
}

/// The amount (at most 8 digits) and unit of a `grpc-timeout`, rounded up.
fn grpc_timeout_parts(timeout: Duration) -> (u128, char) {
    const MAX_DIGITS_VALUE: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    for (unit, nanos_per_unit) in [
        ('n', 1u128),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ] {
        let amount = nanos.div_ceil(nanos_per_unit);
        if amount <= MAX_DIGITS_VALUE {
            return (amount, unit);
        }
    }
    (MAX_DIGITS_VALUE, 'H')
}

/// Accepts or mints the correlation id and captures the deadline; see the
/// module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct CorrelationLayer;

impl CorrelationLayer {
    /// The layer.
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for CorrelationLayer {
    type Service = Correlation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Correlation { inner }
    }
}

/// The service made by [`CorrelationLayer`].
#[derive(Clone, Debug)]
pub struct Correlation<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Correlation<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let correlation_id = CorrelationId::from_headers(request.headers()).unwrap_or_else(CorrelationId::mint);
        let deadline = request
            .headers()
            .get(header_names::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let header_value = correlation_id.header_value();
        request.headers_mut().insert(header_names::CORRELATION_ID, header_value.clone());
        let context = CallContext { correlation_id, deadline };
        request.extensions_mut().insert(context.clone());
        let inner = CALL_CONTEXT.sync_scope(context.clone(), || self.inner.call(request));
        ResponseFuture { inner, context: Some(context), header_value }
    }
}

pin_project! {
    /// Runs the inner future inside the call context and echoes the id.
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        context: Option<CallContext>,
        header_value: HeaderValue,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let context = this.context.take().expect("polled after completion");
        let inner = this.inner;
        let (poll, context) = CALL_CONTEXT.sync_scope(context, || {
            let poll = inner.poll(cx);
            (poll, CALL_CONTEXT.with(Clone::clone))
        });
        match poll {
            Poll::Ready(Ok(mut response)) => {
                response.headers_mut().insert(header_names::CORRELATION_ID, this.header_value.clone());
                Poll::Ready(Ok(response))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                *this.context = Some(context);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceExt, service_fn};

    use super::*;

    async fn echo_context(request: Request<()>) -> Result<Response<String>, Infallible> {
        let from_task = current().expect("context is set while the handler runs");
        let from_extensions = request.extensions().get::<CallContext>().cloned().expect("context in extensions");
        assert_eq!(from_task.correlation_id, from_extensions.correlation_id);
        tokio::task::yield_now().await;
        let still_there = current_correlation_id().expect("context survives a yield");
        Ok(Response::new(format!("{still_there}|{}", from_task.deadline.is_some())))
    }

    async fn call(headers: &[(&'static str, &str)]) -> Response<String> {
        let mut request = Request::new(());
        for (name, value) in headers {
            request.headers_mut().insert(*name, HeaderValue::from_str(value).unwrap());
        }
        CorrelationLayer::new().layer(service_fn(echo_context)).oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn a_sent_id_is_used_and_echoed() {
        let response = call(&[(CORRELATION_ID_HEADER, "abc-123")]).await;
        assert_eq!(response.headers()[CORRELATION_ID_HEADER], "abc-123");
        assert_eq!(response.body(), "abc-123|false");
    }

    #[tokio::test]
    async fn request_id_is_the_fallback() {
        let response = call(&[(REQUEST_ID_HEADER, "req-9")]).await;
        assert_eq!(response.headers()[CORRELATION_ID_HEADER], "req-9");
    }

    #[tokio::test]
    async fn a_missing_or_unusable_id_is_minted() {
        let too_long = "x".repeat(MAX_CORRELATION_ID_BYTES + 1);
        for headers in [vec![], vec![(CORRELATION_ID_HEADER, too_long.as_str())]] {
            let response = call(&headers).await;
            let minted = response.headers()[CORRELATION_ID_HEADER].to_str().unwrap();
            let uuid = uuid::Uuid::parse_str(minted).expect("minted ids are uuids");
            assert_eq!(uuid.get_version_num(), 7);
        }
    }

    #[tokio::test]
    async fn grpc_timeout_becomes_a_deadline() {
        let response = call(&[(GRPC_TIMEOUT_HEADER, "5S")]).await;
        assert!(response.body().ends_with("|true"));
    }

    #[test]
    fn grpc_timeout_round_trips() {
        for (text, duration) in [
            ("100m", Duration::from_millis(100)),
            ("5S", Duration::from_secs(5)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("250u", Duration::from_micros(250)),
            ("7n", Duration::from_nanos(7)),
        ] {
            assert_eq!(parse_grpc_timeout(text), Some(duration), "{text}");
        }
        for bad in ["", "5", "5s", "123456789S", "-1S", "xS", "+5S", " 5S", "S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        assert_eq!(format_grpc_timeout(Duration::from_millis(1500)), "1500000u");
        for duration in [
            Duration::ZERO,
            Duration::from_nanos(99_999_999),
            Duration::from_millis(1500),
            Duration::from_secs(86_400 * 400),
            Duration::MAX,
        ] {
            assert_eq!(grpc_timeout_value(duration), format_grpc_timeout(duration).as_str(), "{duration:?}");
        }
        assert_eq!(
            parse_grpc_timeout(&format_grpc_timeout(Duration::from_secs(86_400 * 400)))
                .map(|d| d >= Duration::from_secs(86_400 * 400)),
            Some(true)
        );
    }

    /// `fuzz/grpc_headers` found that a value ending in a character wider than
    /// one byte panicked the parser: `"Ƥ"` (0xc6 0xa4) split inside the `Ƥ`.
    #[test]
    fn grpc_timeout_with_a_multibyte_last_character_is_refused() {
        for crash in ["\u{1a4}", "1\u{e9}", "5\u{1d5a}", "99999999\u{10ffff}"] {
            assert_eq!(parse_grpc_timeout(crash), None, "{crash:?}");
        }
    }
}
