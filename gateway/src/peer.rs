//! The caller's address, put in every request's extensions by the
//! connection that received it, for rate limits and the access log.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use http::Request;
use tower::Service;

/// The remote address of the caller connection a request came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// Wraps the stack once per caller connection, to tag its requests.
#[derive(Clone, Debug)]
pub(crate) struct SetPeerAddr<S> {
    inner: S,
    peer_addr: SocketAddr,
}

impl<S> SetPeerAddr<S> {
    pub(crate) fn new(inner: S, peer_addr: SocketAddr) -> Self {
        Self { inner, peer_addr }
    }
}

impl<S, B> Service<Request<B>> for SetPeerAddr<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(PeerAddr(self.peer_addr));
        self.inner.call(request)
    }
}
