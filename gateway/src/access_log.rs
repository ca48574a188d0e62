//! The access log: one `info` line per call on target `mesh_gateway::access`,
//! written when its response ends, with the service, method, gRPC status,
//! duration, request and response bytes, peer, correlation id and caller —
//! never a credential. Switched by `access_log`, live.
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

use crate::authn::Identity;
use crate::observe::{CallEnding, CallObserver, ObservedBody};
use crate::peer::PeerAddr;

/// Writes one line per call; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct AccessLogLayer {
    is_enabled: Arc<AtomicBool>,
}

impl AccessLogLayer {
    /// Logs while `is_enabled` holds; reload flips it.
    pub(crate) fn new(is_enabled: Arc<AtomicBool>) -> Self {
        Self { is_enabled }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner, is_enabled: Arc::clone(&self.is_enabled) }
    }
}

/// The service made by [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub(crate) struct AccessLog<S> {
    inner: S,
    is_enabled: Arc<AtomicBool>,
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
        let peer = self.peer.map(|peer| peer.to_string()).unwrap_or_default();
        let correlation_id = self.correlation_id.as_ref().map_or("", CorrelationId::as_str);
        let caller = self.caller.as_ref().map_or("", |Identity(name)| name);
        tracing::info!(
            target: "mesh_gateway::access",
            service,
            method,
            grpc_status = ending.grpc_status,
            duration_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            request_bytes = self.request_bytes.total(),
            response_bytes = ending.response_bytes,
            peer,
            correlation_id,
            caller,
            "call"
        );
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
        let record = self.is_enabled.load(Ordering::Relaxed).then(|| AccessRecord {
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
