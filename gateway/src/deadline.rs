//! Deadlines: every call gets one. The caller's `grpc-timeout` is honoured
//! but cut to the route's maximum, and a call without one gets the route's
//! default. The deadline is put in the request as [`CallDeadline`], from which
//! the proxy forwards the budget *remaining at each attempt*, so a retry never
//! gives the upstream more time than the caller has left. When it passes,
//! the call ends `DEADLINE_EXCEEDED` — also when the upstream, whose own timer
//! races the gateway's, answers first with the `CANCELLED` that tonic reports
//! for an expired `grpc-timeout`.
//!
//! As in tonic, the gateway's timer bounds the wait for the response
//! headers: a unary answer comes whole with them, while a server stream
//! (`WatchEvents`) runs on once its headers are out, for as long as its
//! caller and its endpoint keep it open.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response};
use mesh_kit::RpcError;
use mesh_kit::correlation::parse_grpc_timeout;
use mesh_kit::header_names;
use mesh_kit::rpc_span::split_grpc_path;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tonic::Code;
use tower::{BoxError, Layer, Service};

use crate::config::GatewayConfig;
use crate::reload::Live;

/// The instant a call must be answered by, in the request extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CallDeadline(pub(crate) Instant);

/// A call whose deadline passed before the answer came.
#[derive(Debug, thiserror::Error)]
#[error("deadline of {budget:?} exceeded")]
pub(crate) struct DeadlineExceeded {
    /// The time the call had, after the route's cap or default.
    pub(crate) budget: Duration,
}

impl RpcError for DeadlineExceeded {
    fn code(&self) -> Code {
        Code::DeadlineExceeded
    }

    fn reason(&self) -> &'static str {
        "DEADLINE_EXCEEDED"
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }
}

/// The default and the longest deadline of one route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DeadlineLimits {
    default_deadline: Duration,
    max_deadline: Duration,
}

/// The deadline limits in force, per service with a gateway-wide fallback.
#[derive(Debug)]
pub(crate) struct DeadlinePolicy {
    gateway_wide: DeadlineLimits,
    per_service: HashMap<String, DeadlineLimits>,
}

impl DeadlinePolicy {
    pub(crate) fn from_config(config: &GatewayConfig) -> Self {
        let gateway_wide =
            DeadlineLimits { default_deadline: config.default_deadline, max_deadline: config.max_deadline };
        let per_service = config
            .routes
            .iter()
            .map(|(service, route)| {
                let limits = DeadlineLimits {
                    default_deadline: route.default_deadline.unwrap_or(gateway_wide.default_deadline),
                    max_deadline: route.max_deadline.unwrap_or(gateway_wide.max_deadline),
                };
                (service.clone(), limits)
            })
            .collect();
        Self { gateway_wide, per_service }
    }

    /// The time a call to `path` gets: what it asked for in `headers`, or
    /// the default, and never more than the maximum.
    pub(crate) fn budget(&self, path: &str, headers: &HeaderMap) -> Duration {
        let service = split_grpc_path(path).map_or("", |(service, _method)| service);
        let limits = self.per_service.get(service).unwrap_or(&self.gateway_wide);
        let requested =
            headers.get(header_names::GRPC_TIMEOUT).and_then(|value| value.to_str().ok()).and_then(parse_grpc_timeout);
        requested.unwrap_or(limits.default_deadline).min(limits.max_deadline)
    }
}

/// Gives every call a deadline and enforces it; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct DeadlineLayer {
    policy: Live<DeadlinePolicy>,
}

impl DeadlineLayer {
    pub(crate) fn new(policy: Live<DeadlinePolicy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner, policy: self.policy.clone() }
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Deadline<S> {
    inner: S,
    policy: Live<DeadlinePolicy>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Deadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let budget = self.policy.load().budget(request.uri().path(), request.headers());
        // tokio's clock, so that a paused test clock moves the deadline too.
        let started = tokio::time::Instant::now();
        let deadline = started.checked_add(budget).unwrap_or(started);
        if budget.is_zero() {
            return ResponseFuture::Expired { budget };
        }
        request.extensions_mut().insert(CallDeadline(deadline.into_std()));
        let inner = self.inner.call(request);
        ResponseFuture::Running { inner, expiry: tokio::time::sleep_until(deadline), deadline, budget }
    }
}

pin_project! {
    /// The inner call racing its deadline.
    #[project = ResponseFutureProjection]
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub(crate) enum ResponseFuture<F> {
        Running { #[pin] inner: F, #[pin] expiry: Sleep, deadline: tokio::time::Instant, budget: Duration },
        Expired { budget: Duration },
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProjection::Expired { budget } => {
                Poll::Ready(Err(DeadlineExceeded { budget: *budget }.into()))
            }
            ResponseFutureProjection::Running { inner, expiry, deadline, budget } => {
                if let Poll::Ready(outcome) = inner.poll(cx) {
                    let response = outcome.map_err(Into::into)?;
                    if is_cancelled(response.headers()) && tokio::time::Instant::now() >= *deadline {
                        return Poll::Ready(Err(DeadlineExceeded { budget: *budget }.into()));
                    }
                    return Poll::Ready(Ok(response));
                }
                std::task::ready!(expiry.poll(cx));
                Poll::Ready(Err(DeadlineExceeded { budget: *budget }.into()))
            }
        }
    }
}

/// Whether `headers` end the call CANCELLED (a trailers-only response).
fn is_cancelled(headers: &HeaderMap) -> bool {
    headers.get(header_names::GRPC_STATUS).is_some_and(|status| status.as_bytes() == b"1")
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use mesh_kit::correlation::GRPC_TIMEOUT_HEADER;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::config::RouteConfig;
    use crate::reload::live;

    fn policy() -> DeadlinePolicy {
        let mut config = GatewayConfig {
            default_deadline: Duration::from_secs(30),
            max_deadline: Duration::from_secs(300),
            ..GatewayConfig::default()
        };
        config.routes.insert(
            "mesh.slow.v1.Slow".into(),
            RouteConfig { max_deadline: Some(Duration::from_secs(2)), ..RouteConfig::default() },
        );
        config.routes.insert(
            "mesh.fast.v1.Fast".into(),
            RouteConfig { default_deadline: Some(Duration::from_millis(100)), ..RouteConfig::default() },
        );
        DeadlinePolicy::from_config(&config)
    }

    fn check(path: &str, grpc_timeout: Option<&str>, expected: Duration) {
        let mut headers = HeaderMap::new();
        if let Some(timeout) = grpc_timeout {
            headers.insert(GRPC_TIMEOUT_HEADER, timeout.parse().unwrap());
        }
        assert_eq!(policy().budget(path, &headers), expected, "{path} {grpc_timeout:?}");
    }

    #[test]
    fn the_budget_is_the_callers_capped_or_the_default() {
        check("/mesh.cache.v1.Cache/Get", None, Duration::from_secs(30));
        check("/mesh.cache.v1.Cache/Get", Some("5S"), Duration::from_secs(5));
        check("/mesh.cache.v1.Cache/Get", Some("1H"), Duration::from_secs(300));
        check("/mesh.slow.v1.Slow/Get", Some("10S"), Duration::from_secs(2));
        check("/mesh.slow.v1.Slow/Get", None, Duration::from_secs(2));
        check("/mesh.fast.v1.Fast/Get", None, Duration::from_millis(100));
        check("/mesh.fast.v1.Fast/Get", Some("1S"), Duration::from_secs(1));
        check("/mesh.cache.v1.Cache/Get", Some("garbage"), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn the_deadline_is_handed_down_and_an_expired_one_is_deadline_exceeded() {
        let inner = service_fn(|request: Request<()>| async move {
            let CallDeadline(deadline) = *request.extensions().get::<CallDeadline>().expect("deadline handed down");
            Ok::<_, Infallible>(Response::new(deadline.saturating_duration_since(Instant::now())))
        });
        let service = DeadlineLayer::new(live(policy())).layer(inner);
        let request = Request::builder().uri("/mesh.slow.v1.Slow/Get").header("grpc-timeout", "10S").body(()).unwrap();
        let remaining = service.clone().oneshot(request).await.unwrap().into_body();
        assert!(remaining <= Duration::from_secs(2), "{remaining:?}");

        let request = Request::builder().uri("/mesh.slow.v1.Slow/Get").header("grpc-timeout", "0n").body(()).unwrap();
        let expired = service.oneshot(request).await.unwrap_err();
        assert_eq!(
            mesh_kit::RpcError::code(expired.downcast_ref::<DeadlineExceeded>().unwrap()),
            Code::DeadlineExceeded
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_outlives_the_deadline_is_cut() {
        let (inner, mut handle) = tower_test::mock::pair::<Request<()>, Response<()>>();
        let service = DeadlineLayer::new(live(policy())).layer(inner);
        handle.allow(1);
        let request = Request::builder().uri("/mesh.fast.v1.Fast/Get").body(()).unwrap();
        let call = tokio::spawn(service.oneshot(request));
        let (_request, _never_answered) = handle.next_request().await.unwrap();
        // The paused clock jumps straight to the deadline once every task waits on a timer.
        let error = call.await.unwrap().unwrap_err();
        assert!(error.is::<DeadlineExceeded>());
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstreams_cancelled_after_the_deadline_becomes_deadline_exceeded() {
        let inner = service_fn(|_: Request<()>| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut response = Response::new(());
            response.headers_mut().insert("grpc-status", "1".parse().unwrap());
            Ok::<_, Infallible>(response)
        });
        let service = DeadlineLayer::new(live(policy())).layer(inner);
        let request = Request::builder().uri("/mesh.fast.v1.Fast/Get").body(()).unwrap();
        let error = service.oneshot(request).await.unwrap_err();
        assert!(error.is::<DeadlineExceeded>());
    }
}
