//! Retries of idempotent calls. A call to a method the route lists as
//! idempotent is read whole first (up to `retry_max_body_bytes`), so it can
//! be sent again when the attempt fails UNAVAILABLE: its endpoint answered
//! UNAVAILABLE before any message, or the connection broke. Every call adds
//! to a retry budget (`retry_budget_percent` of recent calls, at least
//! `retry_min_per_second`), and every retry takes from it, so retries cannot
//! multiply the load on a service that is already failing. Any other call,
//! and a body too large to keep, is streamed through and sent once; streams
//! are never replayed once a message has gone out.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use mesh_kit::RpcError;
use mesh_kit::header_names;
use mesh_kit::rpc_span::split_grpc_path;
use prometheus_client::metrics::counter::Counter;
use tonic::Code;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::config::GatewayConfig;
use crate::reload::Live;
use crate::request_body::{Buffered, RequestBody, read_up_to};

/// How long a call's deposit counts towards the budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// The caller's request body broke before it was read whole.
#[derive(Debug, thiserror::Error)]
#[error("the request body broke before it was read: {0}")]
pub(crate) struct RequestBodyBroken(#[source] BoxError);

impl RpcError for RequestBodyBroken {
    fn code(&self) -> Code {
        Code::Cancelled
    }

    fn reason(&self) -> &'static str {
        "REQUEST_BODY_BROKEN"
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }
}

/// The settings a [`RetryPolicy`] is built from; compared on reload, so a
/// reload that changes nothing here keeps the budget.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RetrySettings {
    idempotent_methods: Vec<String>,
    max_attempts: u32,
    max_body_bytes: usize,
    budget_percent: u32,
    min_per_second: u32,
}

impl RetrySettings {
    pub(crate) fn from_config(config: &GatewayConfig, service_name: &str) -> Self {
        Self {
            idempotent_methods: config
                .routes
                .get(service_name)
                .map(|route| route.idempotent_methods.clone())
                .unwrap_or_default(),
            max_attempts: config.retry_max_attempts,
            max_body_bytes: config.retry_max_body_bytes,
            budget_percent: config.retry_budget_percent,
            min_per_second: config.retry_min_per_second,
        }
    }
}

/// The retry rules of one service in force.
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    idempotent_methods: HashSet<String>,
    max_attempts: u32,
    max_body_bytes: usize,
    budget: Arc<TpsBudget>,
}

impl RetryPolicy {
    pub(crate) fn new(settings: &RetrySettings) -> Self {
        #[allow(clippy::cast_precision_loss)] // a percentage up to 1000 is exact in f32
        let retry_ratio = settings.budget_percent as f32 / 100.0;
        Self {
            idempotent_methods: settings.idempotent_methods.iter().cloned().collect(),
            max_attempts: settings.max_attempts,
            max_body_bytes: settings.max_body_bytes,
            budget: Arc::new(TpsBudget::new(BUDGET_WINDOW, settings.min_per_second, retry_ratio)),
        }
    }

    fn is_idempotent(&self, path: &str) -> bool {
        split_grpc_path(path).is_some_and(|(_service, method)| self.idempotent_methods.contains(method))
    }
}

/// Retries idempotent calls within the budget; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct RetryLayer {
    policy: Live<RetryPolicy>,
    retries: Counter,
}

impl RetryLayer {
    /// Retries by `policy`, counting each retry in `retries`.
    pub(crate) fn new(policy: Live<RetryPolicy>, retries: Counter) -> Self {
        Self { policy, retries }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner, policy: self.policy.clone(), retries: self.retries.clone() }
    }
}

/// The service made by [`RetryLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Retry<S> {
    inner: S,
    policy: Live<RetryPolicy>,
    retries: Counter,
}

/// The future of a call that may be retried; boxed, as it loops over awaits.
type RetryingFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError> + Send,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = Either<S::Future, RetryingFuture<Response<ResBody>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let policy = self.policy.load_full();
        policy.budget.deposit();
        if policy.max_attempts <= 1 || !policy.is_idempotent(request.uri().path()) {
            return Either::Left(self.inner.call(request.map(RequestBody::streaming)));
        }
        // The inner service is always ready (balancing holds no queue), so the clone needs no readiness handshake.
        let inner = self.inner.clone();
        let retries = self.retries.clone();
        Either::Right(Box::pin(call_with_retries(inner, policy, retries, request)))
    }
}

async fn call_with_retries<S, B, ResBody>(
    mut inner: S,
    policy: Arc<RetryPolicy>,
    retries: Counter,
    request: Request<B>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>, Error = BoxError>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let kept = match read_up_to(body, policy.max_body_bytes).await {
        Ok(Buffered::Whole(kept)) => kept,
        Ok(Buffered::TooLarge(body)) => {
            return inner.ready().await?.call(Request::from_parts(parts, body)).await;
        }
        Err(error) => return Err(RequestBodyBroken(error.into()).into()),
    };
    let mut attempt = 1;
    loop {
        let mut attempt_request = Request::new(kept.replay());
        *attempt_request.method_mut() = parts.method.clone();
        *attempt_request.uri_mut() = parts.uri.clone();
        *attempt_request.version_mut() = parts.version;
        *attempt_request.headers_mut() = parts.headers.clone();
        *attempt_request.extensions_mut() = parts.extensions.clone();
        let outcome = inner.ready().await?.call(attempt_request).await;
        let is_retryable = match &outcome {
            Ok(response) => is_unavailable(response.headers()),
            // Every error from balancing is an endpoint that could not be reached or broke the call.
            Err(_) => true,
        };
        if !is_retryable || attempt >= policy.max_attempts || !policy.budget.withdraw() {
            return outcome;
        }
        retries.inc();
        attempt += 1;
    }
}

/// Whether `headers` end the call UNAVAILABLE (a trailers-only response).
fn is_unavailable(headers: &HeaderMap) -> bool {
    headers.get(header_names::GRPC_STATUS).is_some_and(|status| status.as_bytes() == b"14")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use tower::service_fn;

    use super::*;
    use crate::reload::live;

    fn policy(max_attempts: u32, min_per_second: u32) -> Live<RetryPolicy> {
        live(RetryPolicy::new(&RetrySettings {
            idempotent_methods: vec!["Get".into()],
            max_attempts,
            max_body_bytes: 1024,
            budget_percent: 0,
            min_per_second,
        }))
    }

    fn unavailable() -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        response.headers_mut().insert("grpc-status", "14".parse().unwrap());
        response
    }

    /// An upstream failing its first `failures` calls, then echoing the body.
    fn flaky(
        failures: usize,
        calls: Arc<AtomicUsize>,
    ) -> impl Service<
        Request<RequestBody<Full<Bytes>>>,
        Response = Response<Bytes>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<Bytes>, BoxError>> + Send,
    > + Clone
    + Send
    + 'static {
        service_fn(move |request: Request<RequestBody<Full<Bytes>>>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = request.into_body().collect().await?.to_bytes();
                if call < failures { Ok(unavailable()) } else { Ok(Response::new(body)) }
            }
        })
    }

    fn call(path: &str) -> Request<Full<Bytes>> {
        Request::builder().uri(path).body(Full::new(Bytes::from_static(b"message"))).unwrap()
    }

    #[tokio::test]
    async fn an_idempotent_call_is_replayed_with_the_same_body() {
        let calls = Arc::new(AtomicUsize::new(0));
        let retries = Counter::default();
        let service = RetryLayer::new(policy(3, 10), retries.clone()).layer(flaky(2, Arc::clone(&calls)));
        let response = service.oneshot(call("/mesh.cache.v1.Cache/Get")).await.unwrap();
        assert_eq!(response.into_body(), "message");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(retries.get(), 2);
    }

    #[tokio::test]
    async fn attempts_stop_at_the_maximum_and_the_last_answer_is_returned() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = RetryLayer::new(policy(2, 10), Counter::default()).layer(flaky(5, Arc::clone(&calls)));
        let response = service.oneshot(call("/mesh.cache.v1.Cache/Get")).await.unwrap();
        assert!(is_unavailable(response.headers()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn other_methods_are_sent_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = RetryLayer::new(policy(3, 10), Counter::default()).layer(flaky(1, Arc::clone(&calls)));
        let response = service.oneshot(call("/mesh.cache.v1.Cache/Set")).await.unwrap();
        assert!(is_unavailable(response.headers()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_empty_budget_stops_retries() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = RetryLayer::new(policy(3, 0), Counter::default()).layer(flaky(1, Arc::clone(&calls)));
        let response = service.oneshot(call("/mesh.cache.v1.Cache/Get")).await.unwrap();
        assert!(is_unavailable(response.headers()));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no budget, no retry");
    }
}
