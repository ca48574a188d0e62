//! Limits on the size of gRPC messages, in both directions, enforced as
//! bodies stream past: every gRPC message starts with a 5-byte prefix (a
//! compression flag and a big-endian `u32` length), so reading the prefixes
//! is enough to refuse a message larger than `max_request_message_bytes` or
//! `max_response_message_bytes` before its payload has arrived; nothing is
//! buffered. A caller's oversized message fails its request body with
//! [`MessageTooLarge`], which the proxy answers `RESOURCE_EXHAUSTED` and
//! resets upstream; an upstream's oversized message ends the response with
//! `RESOURCE_EXHAUSTED` in the trailers, and the upstream stream is reset.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use mesh_kit::correlation::CallContext;
use mesh_kit::{CorrelationId, RpcError};
use pin_project_lite::pin_project;
use tonic::Code;
use tower::{BoxError, Layer, Service};

use crate::access_log::RequestBytes;
use crate::config::GatewayConfig;
use crate::reload::Live;

/// Bytes of the prefix in front of every gRPC message.
const PREFIX_BYTES: usize = 5;

/// The limits in force; swapped whole on reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MessageLimits {
    pub(crate) max_request_bytes: u32,
    pub(crate) max_response_bytes: u32,
}

impl MessageLimits {
    pub(crate) fn from_config(config: &GatewayConfig) -> Self {
        Self {
            max_request_bytes: config.max_request_message_bytes,
            max_response_bytes: config.max_response_message_bytes,
        }
    }
}

/// A message larger than the gateway lets through.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MessageTooLarge {
    /// The caller sent it.
    #[error("request message of {declared} bytes is larger than the gateway's limit of {limit} bytes")]
    Request { declared: u32, limit: u32 },
    /// The upstream sent it. The correlation id travels with the error
    /// because the trailers are built outside the call's task.
    #[error("response message of {declared} bytes is larger than the gateway's limit of {limit} bytes")]
    Response { declared: u32, limit: u32, correlation_id: Option<CorrelationId> },
}

impl RpcError for MessageTooLarge {
    fn code(&self) -> Code {
        Code::ResourceExhausted
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Request { .. } => "REQUEST_MESSAGE_TOO_LARGE",
            Self::Response { .. } => "RESPONSE_MESSAGE_TOO_LARGE",
        }
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Response { correlation_id: Some(correlation_id), .. } => {
                vec![("correlation_id", correlation_id.as_str().to_owned())]
            }
            _ => Vec::new(),
        }
    }
}

/// A message prefix declaring more bytes than allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OversizedMessage {
    declared: u32,
    /// Where its prefix starts in the chunk that completed it (0 when the
    /// prefix began in an earlier chunk); the bytes before belong to
    /// messages that were within the limit.
    prefix_start: usize,
}

/// Where a body is in its sequence of length-prefixed messages.
#[derive(Clone, Copy, Debug, Default)]
struct MessageFraming {
    prefix: [u8; PREFIX_BYTES],
    prefix_filled: usize,
    payload_left: u64,
}

impl MessageFraming {
    /// Follows the messages through `chunk`, the next bytes of the body.
    fn read(&mut self, chunk: &[u8], limit: u32) -> Result<(), OversizedMessage> {
        let mut position = 0;
        while position < chunk.len() {
            let rest = chunk.len() - position;
            if self.payload_left > 0 {
                let skipped = usize::try_from(self.payload_left).map_or(rest, |left| left.min(rest));
                position += skipped;
                self.payload_left -= skipped as u64;
                continue;
            }
            let prefix_start = position.saturating_sub(self.prefix_filled);
            let taken = (PREFIX_BYTES - self.prefix_filled).min(rest);
            self.prefix[self.prefix_filled..self.prefix_filled + taken]
                .copy_from_slice(&chunk[position..position + taken]);
            self.prefix_filled += taken;
            position += taken;
            if self.prefix_filled == PREFIX_BYTES {
                self.prefix_filled = 0;
                let declared = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
                if declared > limit {
                    return Err(OversizedMessage { declared, prefix_start });
                }
                self.payload_left = u64::from(declared);
            }
        }
        Ok(())
    }
}

/// Applies the limits to every call to an upstream; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct MessageLimitLayer {
    limits: Live<MessageLimits>,
}

impl MessageLimitLayer {
    pub(crate) fn new(limits: Live<MessageLimits>) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit { inner, limits: self.limits.clone() }
    }
}

/// The service made by [`MessageLimitLayer`].
#[derive(Clone, Debug)]
pub(crate) struct MessageLimit<S> {
    inner: S,
    limits: Live<MessageLimits>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MessageLimit<S>
where
    S: Service<Request<LimitedRequestBody<ReqBody>>, Response = Response<ResBody>>,
{
    type Response = Response<LimitedResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let limits = **self.limits.load();
        let correlation_id = request.extensions().get::<CallContext>().map(|context| context.correlation_id.clone());
        let request_bytes = request.extensions().get::<RequestBytes>().cloned();
        let request = request.map(|inner| LimitedRequestBody {
            inner,
            framing: MessageFraming::default(),
            limit: limits.max_request_bytes,
            request_bytes,
        });
        ResponseFuture { inner: self.inner.call(request), limit: limits.max_response_bytes, correlation_id }
    }
}

pin_project! {
    /// Wraps the response body in the response limit.
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        limit: u32,
        correlation_id: Option<CorrelationId>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<LimitedResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let limit = *this.limit;
        let correlation_id = this.correlation_id.take();
        Poll::Ready(Ok(response.map(|inner| LimitedResponseBody {
            inner: Some(inner),
            framing: MessageFraming::default(),
            limit,
            refusal: None,
            correlation_id,
        })))
    }
}

pin_project! {
    /// A caller's request body that fails with [`MessageTooLarge`] at the
    /// first prefix over the limit, and counts its bytes for the access log.
    #[allow(missing_debug_implementations)] // wraps an arbitrary body
    pub(crate) struct LimitedRequestBody<B> {
        #[pin]
        inner: B,
        framing: MessageFraming,
        limit: u32,
        request_bytes: Option<RequestBytes>,
    }
}

impl<B> Body for LimitedRequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            if let Some(request_bytes) = this.request_bytes {
                request_bytes.add(data.len());
            }
            if let Err(oversized) = this.framing.read(data, *this.limit) {
                let error = MessageTooLarge::Request { declared: oversized.declared, limit: *this.limit };
                return Poll::Ready(Some(Err(error.into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that ends in `RESOURCE_EXHAUSTED` trailers, and drops the
/// upstream's body (resetting its stream), at the first prefix over the limit.
#[allow(missing_debug_implementations)] // wraps an arbitrary body
pub(crate) struct LimitedResponseBody<B> {
    /// `None` once the limit was hit.
    inner: Option<B>,
    framing: MessageFraming,
    limit: u32,
    /// The trailers still to send after the limit was hit.
    refusal: Option<HeaderMap>,
    correlation_id: Option<CorrelationId>,
}

impl<B> LimitedResponseBody<B> {
    /// The trailers that end a call whose upstream sent `oversized`.
    fn refusal_trailers(&mut self, oversized: OversizedMessage) -> HeaderMap {
        let error = MessageTooLarge::Response {
            declared: oversized.declared,
            limit: self.limit,
            correlation_id: self.correlation_id.take(),
        };
        tracing::debug!(%error, "upstream response refused");
        crate::rescue::refusal_trailers(&error)
    }
}

impl<B> Body for LimitedResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.refusal.take().map(|trailers| Ok(Frame::trailers(trailers))));
        };
        let frame = match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let Err(oversized) = this.framing.read(data, this.limit) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // Dropping the upstream's body resets its stream: no more of the oversized message is read.
        this.inner = None;
        let trailers = this.refusal_trailers(oversized);
        let complete_messages = data.slice(..oversized.prefix_start);
        if complete_messages.is_empty() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        this.refusal = Some(trailers);
        Poll::Ready(Some(Ok(Frame::data(complete_messages))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.refusal.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload_len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&payload_len.to_be_bytes());
        bytes.resize(PREFIX_BYTES + payload_len as usize, 7);
        bytes
    }

    /// Feeds `body` to a fresh framing in chunks of `chunk_len`.
    fn read_in_chunks(body: &[u8], chunk_len: usize, limit: u32) -> Result<(), u32> {
        let mut framing = MessageFraming::default();
        body.chunks(chunk_len).try_for_each(|chunk| framing.read(chunk, limit)).map_err(|oversized| oversized.declared)
    }

    #[test]
    fn messages_within_the_limit_pass_however_the_body_is_split() {
        let body = [message(0), message(10), message(100)].concat();
        for chunk_len in [1, 2, 4, 5, 6, 17, body.len()] {
            assert_eq!(read_in_chunks(&body, chunk_len, 100), Ok(()), "chunks of {chunk_len}");
        }
    }

    #[test]
    fn the_first_message_over_the_limit_is_refused_by_its_prefix_alone() {
        let mut body = [message(3), message(101)].concat();
        body.truncate(8 + PREFIX_BYTES);
        for chunk_len in [1, 3, 5, 7, body.len()] {
            assert_eq!(read_in_chunks(&body, chunk_len, 100), Err(101), "chunks of {chunk_len}");
        }
    }

    #[test]
    fn the_complete_messages_before_an_oversized_one_are_kept() {
        let body = [message(3), message(200)].concat();
        let mut framing = MessageFraming::default();
        let oversized = framing.read(&body, 100).unwrap_err();
        assert_eq!(oversized, OversizedMessage { declared: 200, prefix_start: 8 });
        let mut split = MessageFraming::default();
        split.read(&body[..10], 100).unwrap();
        assert_eq!(split.read(&body[10..], 100).unwrap_err().prefix_start, 0, "the prefix began in the first chunk");
    }

    #[tokio::test]
    async fn the_request_body_counts_its_bytes_for_the_access_log_and_fails_at_the_limit() {
        use http_body_util::BodyExt;

        let frames = [message(10), message(20), message(300)]
            .map(|bytes| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(bytes))));
        let request_bytes = RequestBytes::default();
        let mut body = LimitedRequestBody {
            inner: http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            framing: MessageFraming::default(),
            limit: 100,
            request_bytes: Some(request_bytes.clone()),
        };
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_ok());
        let error = body.frame().await.unwrap().expect_err("the third message is over the limit");
        let error = error.downcast::<MessageTooLarge>().expect("a typed refusal");
        assert!(matches!(*error, MessageTooLarge::Request { declared: 300, limit: 100 }), "{error}");
        assert_eq!(request_bytes.total(), 15 + 25 + 305, "every byte the caller sent is counted");
    }

    #[test]
    fn a_message_too_large_is_resource_exhausted() {
        let error = MessageTooLarge::Request { declared: 5_000_000, limit: 4_194_304 };
        assert_eq!(error.code(), Code::ResourceExhausted);
        assert_eq!(error.reason(), "REQUEST_MESSAGE_TOO_LARGE");
        assert!(error.to_string().contains("4194304"), "{error}");
    }
}
