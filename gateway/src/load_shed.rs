//! The concurrency limit: at most `max_concurrent_calls` calls in the
//! gateway at once, over all callers. One more is shed at once, UNAVAILABLE,
//! rather than queued: a queue only adds latency to calls whose callers are
//! likely to give up, and hides the overload from them. A call counts until
//! its response body ends, so streams count for as long as they run.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use mesh_kit::RpcError;
use pin_project_lite::pin_project;
use tonic::Code;
use tower::{BoxError, Layer, Service};

/// A call refused because the gateway is at its concurrency limit.
#[derive(Debug, thiserror::Error)]
#[error("the gateway is overloaded; retry with backoff")]
pub(crate) struct Shed;

impl RpcError for Shed {
    fn code(&self) -> Code {
        Code::Unavailable
    }

    fn reason(&self) -> &'static str {
        "OVERLOADED"
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }
}

/// The calls in flight and their limit, shared by every connection; the
/// limit is changed in place on reload, so no call is forgotten.
#[derive(Debug)]
pub(crate) struct InFlight {
    calls: AtomicUsize,
    max_calls: AtomicUsize,
}

impl InFlight {
    pub(crate) fn new(max_calls: usize) -> Arc<Self> {
        Arc::new(Self { calls: AtomicUsize::new(0), max_calls: AtomicUsize::new(max_calls) })
    }

    /// Calls in the gateway now.
    pub(crate) fn current(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    pub(crate) fn set_max_calls(&self, max_calls: usize) {
        self.max_calls.store(max_calls, Ordering::Relaxed);
    }

    /// Admits one call, unless the limit is reached.
    fn try_admit(self: &Arc<Self>) -> Option<InFlightPermit> {
        let before = self.calls.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_calls.load(Ordering::Relaxed) {
            self.calls.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlightPermit { in_flight: Arc::clone(self) })
    }
}

/// One admitted call; dropping it lets the next one in.
#[derive(Debug)]
pub(crate) struct InFlightPermit {
    in_flight: Arc<InFlight>,
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        self.in_flight.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sheds calls above the limit; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct LoadShedLayer {
    in_flight: Arc<InFlight>,
}

impl LoadShedLayer {
    pub(crate) fn new(in_flight: Arc<InFlight>) -> Self {
        Self { in_flight }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed { inner, in_flight: Arc::clone(&self.in_flight) }
    }
}

/// The service made by [`LoadShedLayer`].
#[derive(Clone, Debug)]
pub(crate) struct LoadShed<S> {
    inner: S,
    in_flight: Arc<InFlight>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LoadShed<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<PermitBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.in_flight.try_admit() {
            Some(permit) => ResponseFuture::Admitted { inner: self.inner.call(request), permit: Some(permit) },
            None => ResponseFuture::Shed,
        }
    }
}

pin_project! {
    /// The inner call holding its permit, or a shed call.
    #[project = ResponseFutureProjection]
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub(crate) enum ResponseFuture<F> {
        Admitted { #[pin] inner: F, permit: Option<InFlightPermit> },
        Shed,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<PermitBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProjection::Shed => Poll::Ready(Err(Shed.into())),
            ResponseFutureProjection::Admitted { inner, permit } => {
                let response = std::task::ready!(inner.poll(cx)).map_err(Into::into)?;
                let permit = permit.take();
                Poll::Ready(Ok(response.map(|inner| PermitBody { inner, permit })))
            }
        }
    }
}

pin_project! {
    /// A response body that holds its call's permit until it ends.
    #[allow(missing_debug_implementations)] // wraps an arbitrary body
    pub(crate) struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<InFlightPermit>,
    }
}

impl<B: Body> Body for PermitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.permit.take();
        }
        Poll::Ready(frame)
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
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;
    use tower_test::mock;

    use super::*;

    #[tokio::test]
    async fn a_call_above_the_limit_is_shed_at_once_and_the_slot_returns_when_the_body_ends() {
        let in_flight = InFlight::new(1);
        let (inner, mut handle) = mock::pair::<Request<()>, Response<Full<bytes::Bytes>>>();
        let mut service = LoadShedLayer::new(Arc::clone(&in_flight)).layer(inner);

        handle.allow(2);
        let first = service.ready().await.unwrap().call(Request::new(()));
        assert_eq!(in_flight.current(), 1);
        let shed = service.ready().await.unwrap().call(Request::new(())).await.err().expect("over the limit");
        assert!(shed.is::<Shed>());
        assert_eq!(in_flight.current(), 1, "the shed call took no slot");

        let (_request, respond) = handle.next_request().await.expect("the first call reached the inner service");
        respond.send_response(Response::new(Full::new(bytes::Bytes::from_static(b"reply"))));
        let response = first.await.expect("admitted");
        assert_eq!(in_flight.current(), 1, "the body is still being sent");
        let collected = response.into_body().collect().await.map_err(|never: Infallible| never).unwrap();
        assert_eq!(collected.to_bytes(), "reply");
        assert_eq!(in_flight.current(), 0, "the slot is free once the body ended");

        in_flight.set_max_calls(0);
        let shed = service.ready().await.unwrap().call(Request::new(())).await.err().expect("limit lowered");
        assert!(shed.is::<Shed>());
    }

    #[tokio::test]
    async fn a_dropped_call_frees_its_slot() {
        let in_flight = InFlight::new(1);
        let (inner, mut handle) = mock::pair::<Request<()>, Response<Full<bytes::Bytes>>>();
        let mut service = LoadShedLayer::new(Arc::clone(&in_flight)).layer(inner);
        handle.allow(1);
        let call = service.ready().await.unwrap().call(Request::new(()));
        assert_eq!(in_flight.current(), 1);
        drop(call);
        assert_eq!(in_flight.current(), 0);
    }
}
