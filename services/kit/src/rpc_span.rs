//! One tracing span per RPC, joined to the caller's W3C trace.
//!
//! [`RpcSpanLayer`] opens a span named `<package>.<Service>/<Method>` carrying
//! `rpc.system`, `rpc.service`, `rpc.method` and `correlation_id`, continues
//! the trace of an incoming `traceparent`, and records
//! `rpc.grpc.status_code` when the status is known: from the headers of a
//! trailers-only response, else from the trailers at the end of the body.
//! It sits inside [`crate::CorrelationLayer`], which supplies the id.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing::field::Empty;

use crate::correlation::CallContext;
use crate::telemetry;

/// Which side of a call the span describes; sets `otel.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// A service answering a call.
    Server,
    /// A proxy forwarding a call (the gateway).
    Proxy,
}

/// Opens one span per RPC; see the module docs.
#[derive(Clone, Copy, Debug)]
pub struct RpcSpanLayer {
    kind: SpanKind,
}

impl RpcSpanLayer {
    /// Spans for a service's own RPCs.
    #[must_use]
    pub fn server() -> Self {
        Self { kind: SpanKind::Server }
    }

    /// Spans for RPCs the gateway forwards.
    #[must_use]
    pub fn proxy() -> Self {
        Self { kind: SpanKind::Proxy }
    }
}

impl<S> Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner, kind: self.kind }
    }
}

/// The service made by [`RpcSpanLayer`].
#[derive(Clone, Debug)]
pub struct RpcSpan<S> {
    inner: S,
    kind: SpanKind,
}

/// Splits `/pkg.Service/Method` into its service and method.
#[must_use]
pub fn split_grpc_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

fn rpc_span<B>(request: &Request<B>, kind: SpanKind) -> Span {
    let path = request.uri().path();
    let (service, method) = split_grpc_path(path).unwrap_or(("unknown", "unknown"));
    // Borrowed, not copied: the span's layers record the text as they need it.
    let correlation_id = request.extensions().get::<CallContext>().map_or("", |c| c.correlation_id.as_str());
    let otel_kind = match kind {
        SpanKind::Server => "server",
        SpanKind::Proxy => "client",
    };
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = otel_kind,
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        correlation_id = %correlation_id,
        rpc.grpc.status_code = Empty,
    );
    telemetry::set_parent_from_headers(&span, request.headers());
    span
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcSpan<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<RecordStatusBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let span = rpc_span(&request, self.kind);
        let inner = span.in_scope(|| self.inner.call(request));
        ResponseFuture { inner, span }
    }
}

pin_project! {
    /// Polls the inner future inside the RPC span.
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<RecordStatusBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(error)) => {
                this.span.record("otel.status_code", "ERROR");
                return Poll::Ready(Err(error));
            }
            Poll::Ready(Ok(response)) => response,
        };
        let recorded = record_status(this.span, response.headers());
        let span = if recorded { Span::none() } else { this.span.clone() };
        Poll::Ready(Ok(response.map(|inner| RecordStatusBody { inner, span })))
    }
}

/// Records `grpc-status` from `headers` on `span`; false when absent.
fn record_status(span: &Span, headers: &HeaderMap) -> bool {
    let Some(code) =
        headers.get(crate::header_names::GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok())
    else {
        return false;
    };
    span.record("rpc.grpc.status_code", code);
    if code != 0 {
        span.record("otel.status_code", "ERROR");
    }
    true
}

pin_project! {
    /// A response body that records the gRPC status from its trailers.
    #[allow(missing_debug_implementations)] // wraps an arbitrary body
    pub struct RecordStatusBody<B> {
        #[pin]
        inner: B,
        span: Span,
    }
}

impl<B: Body> Body for RecordStatusBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(trailers) = frame.trailers_ref()
        {
            record_status(this.span, trailers);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(split_grpc_path("/mesh.cache.v1.Cache/Get"), Some(("mesh.cache.v1.Cache", "Get")));
        assert_eq!(split_grpc_path("/mesh.cache.v1.Cache/"), None);
        assert_eq!(split_grpc_path("/mesh.cache.v1.Cache"), None);
        assert_eq!(split_grpc_path("mesh.cache.v1.Cache/Get"), None);
        assert_eq!(split_grpc_path("/a/b/c"), None);
    }
}
