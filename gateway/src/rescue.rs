//! The edge of the error model: every typed error a layer below returns
//! becomes a trailers-only gRPC status here, in one function ([`rescue`]),
//! through `mesh_kit::to_status`, so it carries `ErrorInfo` with the
//! correlation id (and `RetryInfo` for rate limits). An error of no known
//! type is an internal error: logged in full, answered generically.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::Either;
use mesh_kit::RpcError;
use mesh_kit::error::EdgeError;
use pin_project_lite::pin_project;
use tonic::{Code, Status};
use tower::{BoxError, Layer, Service};

use crate::authn::AuthError;
use crate::balance::Unavailable;
use crate::deadline::DeadlineExceeded;
use crate::load_shed::Shed;
use crate::message_limit::MessageTooLarge;
use crate::metrics::GatewayMetrics;
use crate::rate_limit::RateLimited;
use crate::retry::RequestBodyBroken;

/// An error no layer claims; its chain is logged by `to_status`.
#[derive(Debug, thiserror::Error)]
#[error("unexpected gateway error: {0}")]
struct Unexpected(#[source] BoxError);

impl RpcError for Unexpected {
    fn code(&self) -> Code {
        Code::Internal
    }

    fn reason(&self) -> &'static str {
        "UNEXPECTED"
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }
}

/// The status for `error`, and its `ErrorInfo` reason: the first error in
/// its `source()` chain that is one of the gateway's types decides; anything
/// else is internal.
pub(crate) fn rescue(error: BoxError) -> (Status, &'static str) {
    fn known<E: RpcError>(error: &E) -> (Status, &'static str) {
        (mesh_kit::to_status(error), error.reason())
    }
    // An oversized message is the caller's or the upstream's doing, whatever it broke on its way (the upstream
    // call, the read of a body kept for replay), so it is looked for through the whole chain first.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(current) = cause {
        if let Some(error) = current.downcast_ref::<MessageTooLarge>() {
            return known(error);
        }
        cause = current.source();
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(current) = cause {
        if let Some(error) = current.downcast_ref::<AuthError>() {
            return known(error);
        }
        if let Some(error) = current.downcast_ref::<RateLimited>() {
            return known(error);
        }
        if let Some(error) = current.downcast_ref::<Shed>() {
            return known(error);
        }
        if let Some(error) = current.downcast_ref::<DeadlineExceeded>() {
            return known(error);
        }
        if let Some(error) = current.downcast_ref::<Unavailable>() {
            tracing::debug!(%error, cause = %error.cause, "upstream call failed");
            return known(error);
        }
        if let Some(error) = current.downcast_ref::<RequestBodyBroken>() {
            return known(error);
        }
        if let Some(error) = current.downcast_ref::<EdgeError>() {
            return known(error);
        }
        cause = current.source();
    }
    known(&Unexpected(error))
}

/// The trailers that end a response already under way with `error`'s
/// status, for a refusal that comes after the headers have gone out.
pub(crate) fn refusal_trailers<E: RpcError>(error: &E) -> http::HeaderMap {
    let (parts, ()) = mesh_kit::to_status(error).into_http::<()>().into_parts();
    let mut trailers = parts.headers;
    // The status's own headers, as a trailers-only response would send them; the content type went out already.
    trailers.remove(http::header::CONTENT_TYPE);
    trailers
}

/// Turns the errors of the layers below into responses, counting each by
/// its reason; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct RescueLayer {
    metrics: Arc<GatewayMetrics>,
}

impl RescueLayer {
    pub(crate) fn new(metrics: Arc<GatewayMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner, metrics: Arc::clone(&self.metrics) }
    }
}

/// The service made by [`RescueLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Rescue<S> {
    inner: S,
    metrics: Arc<GatewayMetrics>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Rescue<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<Either<ResBody, tonic::body::Body>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The stack below is always ready; an error here would have no call to answer.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(()) | Err(_)) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ResponseFuture { inner: self.inner.call(request), metrics: Arc::clone(&self.metrics) }
    }
}

pin_project! {
    /// Maps the inner outcome to a response.
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<GatewayMetrics>,
    }
}

impl<F, ResBody> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<Either<ResBody, tonic::body::Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(Ok(match outcome {
            Ok(response) => response.map(Either::Left),
            Err(error) => {
                let (status, reason) = rescue(error);
                this.metrics.count_refusal(reason);
                status.into_http::<tonic::body::Body>().map(Either::Right)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::StatusExt;

    use super::*;

    fn code_and_reason(error: impl Into<BoxError>) -> (Code, String) {
        let (status, reason_counted) = rescue(error.into());
        let reason = status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default();
        assert_eq!(reason, reason_counted);
        (status.code(), reason)
    }

    #[test]
    fn every_gateway_error_has_its_code_and_reason() {
        let check = |error: BoxError, code: Code, reason: &str| {
            assert_eq!(code_and_reason(error), (code, reason.to_owned()));
        };
        check(AuthError::MissingCredentials.into(), Code::Unauthenticated, "CREDENTIALS_MISSING");
        check(AuthError::UnknownCredentials.into(), Code::Unauthenticated, "CREDENTIALS_INVALID");
        let not_allowed = AuthError::NotAllowed { identity: "reader".into(), service: "s".into(), method: "m".into() };
        check(not_allowed.into(), Code::PermissionDenied, "METHOD_NOT_ALLOWED");
        check(RateLimited { retry_after: Duration::from_millis(250) }.into(), Code::ResourceExhausted, "RATE_LIMITED");
        check(Shed.into(), Code::Unavailable, "OVERLOADED");
        check(DeadlineExceeded { budget: Duration::from_secs(1) }.into(), Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
        check("something odd".into(), Code::Internal, "UNEXPECTED");
    }

    #[test]
    fn a_rate_limit_says_when_to_retry() {
        let (status, _) = rescue(RateLimited { retry_after: Duration::from_millis(250) }.into());
        let retry_info = status.get_error_details().retry_info().cloned().expect("RetryInfo");
        assert_eq!(retry_info.retry_delay, Some(Duration::from_millis(250)));
    }
}
