//! The access log: one `info` line per call on target `mesh_gateway::access`,
//! written when its response ends, with the service, method, gRPC status,
//! duration, request and response bytes, peer, correlation id and caller —
//! never a credential. Switched by `access_log`, live, and by the log filter
//! (`RUST_LOG`). The line is formatted and written by
//! [`AccessLogSink`](crate::access_sink::AccessLogSink), off the call's path.
//!
//! Request bytes are the body bytes a routed call's caller sent, counted by
//! `message_limit`, which reads every request frame anyway, into the
//! [`RequestBytes`] this layer puts in the request; the gateway's own
//! services (health, reflection) log 0.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Request, Response};
use mesh_kit::CorrelationId;
use mesh_kit::correlation::CallContext;
use mesh_kit::rpc_span::split_grpc_path;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::access_sink::{AccessLine, AccessLogSink};
use crate::authn::Identity;
use crate::observe::{CallEnding, CallObserver, ObservedBody};
use crate::peer::PeerAddr;

/// Writes one line per call; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct AccessLogLayer {
    is_enabled: Arc<AtomicBool>,
    sink: Arc<AccessLogSink>,
}

impl AccessLogLayer {
    /// Logs to `sink` while `is_enabled` holds; reload flips it.
    pub(crate) fn new(is_enabled: Arc<AtomicBool>, sink: Arc<AccessLogSink>) -> Self {
        Self { is_enabled, sink }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner, is_enabled: Arc::clone(&self.is_enabled), sink: Arc::clone(&self.sink) }
    }
}

/// The service made by [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub(crate) struct AccessLog<S> {
    inner: S,
    is_enabled: Arc<AtomicBool>,
    sink: Arc<AccessLogSink>,
}

/// The request body bytes of one call so far, shared with the layer that
/// counts them.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestBytes(Arc<AtomicU64>);

impl RequestBytes {
    /// Counts `bytes` more.
    pub(crate) fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the line of one call needs.
pub(crate) struct AccessRecord {
    sink: Arc<AccessLogSink>,
    request_bytes: RequestBytes,
    path: Option<PathAndQuery>,
    peer: Option<SocketAddr>,
    correlation_id: Option<CorrelationId>,
    caller: Option<Identity>,
    started: Instant,
}

impl CallObserver for AccessRecord {
    fn call_ended(self, ending: CallEnding) {
        let path = self.path.as_ref().map_or("", PathAndQuery::path);
        let (service, method) = split_grpc_path(path).unwrap_or(("", path));
        self.sink.record(&AccessLine {
            service,
            method,
            grpc_status: ending.grpc_status,
            duration_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            request_bytes: self.request_bytes.total(),
            response_bytes: ending.response_bytes,
            peer: self.peer,
            correlation_id: self.correlation_id.as_ref().map_or("", CorrelationId::as_str),
            caller: self.caller.as_ref().map_or("", |Identity(name)| name),
        });
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ObservedBody<ResBody, AccessRecord>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let is_logged = self.is_enabled.load(Ordering::Relaxed) && AccessLogSink::is_enabled();
        let record = is_logged.then(|| AccessRecord {
            sink: Arc::clone(&self.sink),
            request_bytes: RequestBytes::default(),
            path: request.uri().path_and_query().cloned(),
            peer: request.extensions().get::<PeerAddr>().map(|PeerAddr(peer)| *peer),
            correlation_id: request.extensions().get::<CallContext>().map(|context| context.correlation_id.clone()),
            caller: None,
            started: Instant::now(),
        });
        if let Some(record) = &record {
            request.extensions_mut().insert(record.request_bytes.clone());
        }
        ResponseFuture { inner: self.inner.call(request), record }
    }
}

pin_project! {
    /// Hands the record, with the caller the layers below named, to the body.
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        record: Option<AccessRecord>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ObservedBody<ResBody, AccessRecord>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let mut record = this.record.take();
        let (parts, body) = response.into_parts();
        if let Some(record) = &mut record {
            record.caller = parts.extensions.get::<Identity>().cloned();
        }
        let body = ObservedBody::new(body, &parts.headers, record);
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::access_sink::{Captured, LineFormat};

    /// Makes `calls` calls carrying credentials through the layer, switched
    /// by `is_enabled`, and returns what the sink wrote.
    async fn log_calls(is_enabled: bool, calls: usize) -> String {
        // The line honours the log filter; a bare registry lets everything through.
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let captured = Captured::default();
        let sink = AccessLogSink::new(Box::new(captured.clone()), LineFormat::Human, 1 << 20);
        let inner = service_fn(|_: Request<Full<Bytes>>| async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"12345")));
            response.headers_mut().insert("grpc-status", "0".parse().unwrap());
            response.extensions_mut().insert(Identity("ops".into()));
            Ok::<_, Infallible>(response)
        });
        let service = AccessLogLayer::new(Arc::new(AtomicBool::new(is_enabled)), Arc::clone(&sink)).layer(inner);
        for _ in 0..calls {
            let request = Request::builder()
                .uri("/mesh.cache.v1.Cache/Get")
                .header("authorization", "Bearer s3cret-token")
                .header("x-api-key", "s3cret-key")
                .body(Full::new(Bytes::from_static(b"abc")))
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        sink.close();
        captured.text()
    }

    #[tokio::test]
    async fn each_call_gets_one_line_naming_the_caller_and_never_its_credentials() {
        let text = log_calls(true, 3).await;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for line in lines {
            assert!(line.contains(r#"call service="mesh.cache.v1.Cache" method="Get" grpc_status=0"#), "{line}");
            assert!(line.contains("response_bytes=5"), "{line}");
            assert!(line.contains(r#"caller="ops""#), "{line}");
        }
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[tokio::test]
    async fn a_switched_off_log_writes_nothing() {
        assert_eq!(log_calls(false, 3).await, "");
    }
}
