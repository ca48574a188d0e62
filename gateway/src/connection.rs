//! One caller connection, from the accepted socket to its close: the TLS
//! handshake when TLS is on (bounded by `tls_handshake_timeout`), the
//! HTTP/2 server over it, and the three reasons the gateway closes it
//! gracefully (GOAWAY, calls in flight finish): the drain, `idle_timeout`
//! passing with no call open, and a caller that resets most of its calls
//! before they are answered (HTTP/2 "rapid reset", CVE-2023-44487).
//!
//! Rapid reset: h2's own guard only counts streams reset before the server
//! accepts them, and hyper accepts every stream at once, so the gateway
//! counts calls the caller cancelled before their response started. At
//! [`PREMATURE_RESET_MIN_CALLS`] such calls, when they are more than half of
//! the connection's calls, the connection gets GOAWAY and takes no new call.
//! (hyper sends GOAWAY with `NO_ERROR`; it offers no way to say
//! `ENHANCE_YOUR_CALM`.) Cancelling calls now and then never comes near it.
//!
//! [`ConnectionService`] wraps the caller stack once per connection to put
//! what the connection knows into each request (the peer address, the
//! client certificate's identities) and to count the calls open on it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use mesh_kit::CancellationToken;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tower::Service;
use tracing::{debug, warn};

use crate::peer::PeerAddr;
use crate::stack::CallerStack;
use crate::tls::ClientCertificate;

/// Calls cancelled by the caller before their response started, at which
/// (when they are most of its calls) a connection is closed.
pub(crate) const PREMATURE_RESET_MIN_CALLS: u32 = 100;

/// What every caller connection is served with; built once at start.
pub(crate) struct ListenerSettings {
    pub(crate) http2: http2::Builder<TokioExecutor>,
    /// `None`: plaintext h2c.
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) tls_handshake_timeout: Duration,
    /// `None`: idle connections stay open.
    pub(crate) idle_timeout: Option<Duration>,
}

impl std::fmt::Debug for ListenerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSettings")
            .field("is_tls", &self.tls.is_some())
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// Serves one accepted connection until it closes; see the module docs.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    remote_addr: SocketAddr,
    stack: CallerStack,
    listener: Arc<ListenerSettings>,
    shutdown: CancellationToken,
) {
    let activity = listener.idle_timeout.map(|_| Arc::new(ConnectionActivity::new()));
    let Some(acceptor) = &listener.tls else {
        let service = ConnectionService::new(stack, remote_addr, None, activity.clone());
        return drive(stream, service, &listener, activity, shutdown).await;
    };
    // In the connection's own task, so a slow or silent caller holds up nobody else's accept.
    let handshake = tokio::time::timeout(listener.tls_handshake_timeout, acceptor.accept(stream));
    let tls_stream = tokio::select! {
        () = shutdown.cancelled() => return,
        outcome = handshake => match outcome {
            Ok(Ok(tls_stream)) => tls_stream,
            Ok(Err(handshake_error)) => {
                debug!(%remote_addr, %handshake_error, "tls handshake failed");
                return;
            }
            Err(_elapsed) => {
                debug!(%remote_addr, timeout = ?listener.tls_handshake_timeout, "tls handshake timed out");
                return;
            }
        },
    };
    let certificate = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|end_entity| ClientCertificate::from_der(end_entity));
    let service = ConnectionService::new(stack, remote_addr, certificate, activity.clone());
    drive(tls_stream, service, &listener, activity, shutdown).await;
}

/// Runs the HTTP/2 server on `io` until the connection ends, asking it to
/// close (GOAWAY) on the drain or once idle.
async fn drive<I>(
    io: I,
    service: ConnectionService<CallerStack>,
    listener: &ListenerSettings,
    activity: Option<Arc<ConnectionActivity>>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote_addr = service.peer_addr.0;
    let resets = Arc::clone(&service.resets);
    let connection = listener.http2.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    let mut connection = std::pin::pin!(connection);
    let mut is_closing = false;
    loop {
        let idle = async {
            match (&activity, listener.idle_timeout) {
                (Some(activity), Some(idle_timeout)) => activity.idle_for(idle_timeout).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(connection_error) = outcome {
                    debug!(%remote_addr, %connection_error, "caller connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !is_closing => {
                connection.as_mut().graceful_shutdown();
                is_closing = true;
            }
            () = idle, if !is_closing => {
                debug!(%remote_addr, "caller connection idle; closing it");
                connection.as_mut().graceful_shutdown();
                is_closing = true;
            }
            () = resets.tripped.notified(), if !is_closing => {
                warn!(
                    %remote_addr,
                    premature_resets = resets.premature.load(Ordering::Relaxed),
                    calls = resets.calls.load(Ordering::Relaxed),
                    "caller resets most calls before they are answered (rapid reset); closing its connection"
                );
                connection.as_mut().graceful_shutdown();
                is_closing = true;
            }
        }
    }
}

// === impl ConnectionActivity ===

/// The calls open on one connection, and when the last one ended.
#[derive(Debug)]
pub(crate) struct ConnectionActivity {
    opened: Instant,
    open_calls: AtomicUsize,
    /// Microseconds from `opened` to the end of the last call.
    last_call_ended_micros: AtomicU64,
}

impl ConnectionActivity {
    fn new() -> Self {
        Self { opened: Instant::now(), open_calls: AtomicUsize::new(0), last_call_ended_micros: AtomicU64::new(0) }
    }

    fn micros_since_opened(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn call_started(self: &Arc<Self>) -> OpenCall {
        self.open_calls.fetch_add(1, Ordering::AcqRel);
        OpenCall(Arc::clone(self))
    }

    /// Returns once no call has been open for `idle_timeout`. Sleeps in
    /// steps of at most `idle_timeout`, so it costs one timer per connection.
    async fn idle_for(&self, idle_timeout: Duration) {
        loop {
            let next_check = if self.open_calls.load(Ordering::Acquire) == 0 {
                let last_ended = self.last_call_ended_micros.load(Ordering::Acquire);
                let idle = Duration::from_micros(self.micros_since_opened().saturating_sub(last_ended));
                if idle >= idle_timeout {
                    return;
                }
                idle_timeout.saturating_sub(idle)
            } else {
                idle_timeout
            };
            tokio::time::sleep(next_check).await;
        }
    }
}

/// One open call; ends when dropped with the response body.
#[derive(Debug)]
struct OpenCall(Arc<ConnectionActivity>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        let activity = &self.0;
        // The end time first, so a check that sees no call open sees this one's end.
        activity.last_call_ended_micros.store(activity.micros_since_opened(), Ordering::Release);
        activity.open_calls.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl PrematureResets ===

/// Calls on one connection, and those the caller cancelled before their
/// response started; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct PrematureResets {
    calls: AtomicU32,
    premature: AtomicU32,
    tripped: Notify,
}

impl PrematureResets {
    fn call_started(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn call_cancelled_early(&self) {
        let premature = self.premature.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if premature >= PREMATURE_RESET_MIN_CALLS && premature > self.calls.load(Ordering::Relaxed) / 2 {
            // Stores one wake-up at most, however often it is called.
            self.tripped.notify_one();
        }
    }
}

// === impl ConnectionService ===

/// The caller stack as one connection serves it; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionService<S> {
    inner: S,
    peer_addr: PeerAddr,
    certificate: Option<ClientCertificate>,
    activity: Option<Arc<ConnectionActivity>>,
    resets: Arc<PrematureResets>,
}

impl<S> ConnectionService<S> {
    pub(crate) fn new(
        inner: S,
        peer_addr: SocketAddr,
        certificate: Option<ClientCertificate>,
        activity: Option<Arc<ConnectionActivity>>,
    ) -> Self {
        Self { inner, peer_addr: PeerAddr(peer_addr), certificate, activity, resets: Arc::default() }
    }
}

impl<S, B, ResBody> Service<Request<B>> for ConnectionService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let open_call = self.activity.as_ref().map(ConnectionActivity::call_started);
        self.resets.call_started();
        request.extensions_mut().insert(self.peer_addr);
        if let Some(certificate) = &self.certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        let unanswered = Some(UnansweredCall(Some(Arc::clone(&self.resets))));
        TrackedFuture { inner: self.inner.call(request), open_call, unanswered }
    }
}

pin_project! {
    /// Hands the open call on to the response body.
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        open_call: Option<OpenCall>,
        unanswered: Option<UnansweredCall>,
    }
}

/// A call whose response has not started; dropped unanswered (the caller
/// reset the stream, or the connection ended), it counts as premature.
#[derive(Debug)]
struct UnansweredCall(Option<Arc<PrematureResets>>);

impl UnansweredCall {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for UnansweredCall {
    fn drop(&mut self) {
        if let Some(resets) = &self.0 {
            resets.call_cancelled_early();
        }
    }
}

impl<F, ResBody, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TrackedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        if let Some(unanswered) = this.unanswered.take() {
            unanswered.answered();
        }
        let response = response?;
        let open_call = this.open_call.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, _open_call: open_call })))
    }
}

pin_project! {
    /// A response body that keeps its call counted as open until it is dropped.
    #[allow(missing_debug_implementations)] // wraps an arbitrary body
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        _open_call: Option<OpenCall>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
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

    fn tripped(resets: &PrematureResets) -> bool {
        let notified = resets.tripped.notified();
        let mut notified = std::pin::pin!(notified);
        // `enable` reports a stored wake-up without waiting for one.
        notified.as_mut().enable()
    }

    #[test]
    fn most_calls_reset_unanswered_trip_the_guard_and_a_few_do_not() {
        let resets = PrematureResets::default();
        for _ in 0..1000 {
            resets.call_started();
        }
        for _ in 0..PREMATURE_RESET_MIN_CALLS {
            resets.call_cancelled_early();
        }
        assert!(!tripped(&resets), "100 cancelled of 1000 calls is normal cancellation");

        let rapid = PrematureResets::default();
        for _ in 0..PREMATURE_RESET_MIN_CALLS {
            rapid.call_started();
            rapid.call_cancelled_early();
        }
        assert!(tripped(&rapid));
    }

    #[test]
    fn an_answered_call_is_not_counted() {
        let resets = Arc::new(PrematureResets::default());
        resets.call_started();
        UnansweredCall(Some(Arc::clone(&resets))).answered();
        assert_eq!(resets.premature.load(Ordering::Relaxed), 0);
        drop(UnansweredCall(Some(Arc::clone(&resets))));
        assert_eq!(resets.premature.load(Ordering::Relaxed), 1);
        assert_eq!(Arc::strong_count(&resets), 1, "no reference is leaked");
    }
}
