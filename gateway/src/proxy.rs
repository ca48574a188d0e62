//! Transparent HTTP/2 passthrough to one upstream: the caller's request goes
//! out with its headers (`te`, `grpc-timeout`, `content-type`, metadata) and
//! its body stream untouched, only re-addressed and stamped with the call
//! context; the upstream's response — headers, streamed body, trailers, or a
//! trailers-only error — comes back as it is.
//!
//! # Why a pool of `SendRequest`s rather than the legacy `Client`
//! Each [`Upstream`] keeps a small fixed set of HTTP/2 connections, each a
//! `hyper::client::conn::http2::SendRequest` that is redialled when it closes,
//! and spreads calls over them in turn. The legacy client would hold exactly
//! one multiplexed connection per upstream, so a single GOAWAY (e.g.
//! `too_many_resets` after a burst of cancelled calls) fails every call in
//! flight, and one connection task does all the framing on one core; it also
//! adds a pool lookup and a boxed future per call. A plain `SendRequest` is
//! the cheapest way to put a request on a connection, and tonic's `Channel`
//! adds a `Buffer` that costs about 10 % of throughput.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_kit::error::EdgeError;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::config::GatewayConfig;
use crate::route::ResponseBody;

/// Streams this gateway has reset that one upstream connection remembers.
/// HTTP/2 requires ignoring frames that still arrive for a reset stream; once
/// a reset stream is forgotten, such a frame is a protocol error that closes
/// the whole connection. A caller that cancels hundreds of calls at once makes
/// the gateway reset as many upstream streams, far above h2's default of 50.
const RESET_STREAMS_REMEMBERED: usize = 4096;

/// A configured service's upstream and the connections to it.
#[derive(Debug)]
pub(crate) struct Upstream {
    service_name: &'static str,
    /// Replaces the caller's authority in forwarded requests; also the dial address.
    authority: Authority,
    connections: Box<[UpstreamConnection]>,
    /// Round-robin cursor over `connections`.
    next_connection: AtomicUsize,
    connect_timeout: Duration,
    http2_client: http2::Builder<TokioExecutor>,
}

/// One slot of the pool: an open connection, or none until the next call dials.
#[derive(Debug, Default)]
struct UpstreamConnection {
    /// The open connection. A std mutex, held only to put a request on the
    /// connection (a synchronous enqueue), never across an await.
    sender: Mutex<Option<SendRequest<Incoming>>>,
    /// Serialises dialling so one dead upstream is dialled once per slot, not
    /// once per waiting call; holds the consecutive failures, for logging.
    dialing: tokio::sync::Mutex<u32>,
    /// Dials that failed, ever; a call that waited for a dial and sees this
    /// change fails at once instead of dialling again.
    failed_dials: AtomicU64,
}

/// What hyper reports for one request put on a connection: the response, or
/// the error with the request when it was never sent.
type SendOutcome = Result<Response<Incoming>, TrySendError<Request<Incoming>>>;

/// Why a call could not be forwarded; logged, and answered UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("http/2 handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("dialling failed moments ago")]
    RecentDialFailed,
    #[error("the new connection closed before the call could be sent")]
    ClosedOnArrival,
    #[error("call broken: {0}")]
    Call(hyper::Error),
}

// === impl Upstream ===

impl Upstream {
    /// The upstream of `service_name` at `authority`; connects on first use.
    pub(crate) fn new(service_name: &'static str, authority: Authority, config: &GatewayConfig) -> Self {
        let mut http2_client = http2::Builder::new(TokioExecutor::new());
        http2_client
            .timer(TokioTimer::new())
            .keep_alive_interval(config.keepalive_interval)
            .keep_alive_timeout(config.keepalive_timeout)
            // An idle connection is checked too, so a dead one is redialled before a call finds it.
            .keep_alive_while_idle(true)
            .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED);
        Self {
            service_name,
            authority,
            connections: (0..config.upstream_connections).map(|_| UpstreamConnection::default()).collect(),
            next_connection: AtomicUsize::new(0),
            connect_timeout: config.upstream_connect_timeout,
            http2_client,
        }
    }

    /// The gRPC service this upstream serves.
    pub(crate) fn service_name(&self) -> &'static str {
        self.service_name
    }

    /// Forwards `request` and returns the upstream's response as it is, or a
    /// trailers-only UNAVAILABLE when the upstream cannot be reached or
    /// breaks the call before answering. Runs inside the call's context, which
    /// `mesh_kit::to_status` and `stamp_call_context` read.
    pub(crate) async fn forward(&self, mut request: Request<Incoming>) -> Response<ResponseBody> {
        self.address_to_upstream(&mut request);
        match self.send(request).await {
            Ok(response) => response.map(Either::Left),
            Err(error) => {
                debug!(service = self.service_name, %error, "upstream call failed");
                let unavailable = EdgeError::UpstreamUnavailable { service: self.service_name.to_owned() };
                mesh_kit::to_status(&unavailable).into_http::<tonic::body::Body>().map(Either::Right)
            }
        }
    }

    /// Points the request at the upstream (scheme and authority only; the
    /// path, headers and body stay), and adds the correlation id, the
    /// gateway span's `traceparent` and the remaining deadline.
    fn address_to_upstream(&self, request: &mut Request<Incoming>) {
        let mut uri_parts = std::mem::take(request.uri_mut()).into_parts();
        uri_parts.scheme = Some(Scheme::HTTP);
        uri_parts.authority = Some(self.authority.clone());
        *request.uri_mut() =
            Uri::from_parts(uri_parts).expect("a routed request has a path, and scheme and authority are set here");
        mesh_kit::client::stamp_call_context(request.headers_mut());
    }

    /// Sends `request` on the next connection of the pool, dialling it if it
    /// is closed. A request the connection hands back unsent (it was closing,
    /// e.g. after a GOAWAY) is sent once more on a fresh connection; a request
    /// that may have reached the upstream is never repeated.
    async fn send(&self, mut request: Request<Incoming>) -> Result<Response<Incoming>, ProxyError> {
        let connection_index = self.next_connection.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let connection = &self.connections[connection_index];
        let mut sends_left = 2;
        loop {
            let in_flight = match connection.try_send(request) {
                Ok(in_flight) => in_flight,
                Err(unsent) => {
                    self.redial(connection).await?;
                    connection.try_send(unsent).map_err(|_| ProxyError::ClosedOnArrival)?
                }
            };
            sends_left -= 1;
            match in_flight.await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if sends_left > 0 => request = unsent,
                    _ => return Err(ProxyError::Call(error.into_error())),
                },
            }
        }
    }

    /// Opens a new connection in `connection`'s slot, unless another call did
    /// while this one waited, or a dial failed while this one waited.
    async fn redial(&self, connection: &UpstreamConnection) -> Result<(), ProxyError> {
        let failed_dials_before_waiting = connection.failed_dials.load(Ordering::Acquire);
        let mut consecutive_failures = connection.dialing.lock().await;
        if connection.is_open() {
            return Ok(());
        }
        if connection.failed_dials.load(Ordering::Acquire) != failed_dials_before_waiting {
            return Err(ProxyError::RecentDialFailed);
        }
        match self.dial().await {
            Ok(sender) => {
                if *consecutive_failures > 0 {
                    info!(service = self.service_name, upstream = %self.authority, "upstream reachable again");
                }
                *consecutive_failures = 0;
                *connection.sender.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
                Ok(())
            }
            Err(error) => {
                connection.failed_dials.fetch_add(1, Ordering::Release);
                *consecutive_failures += 1;
                // One warning per outage, not one per call that finds the upstream down.
                if *consecutive_failures == 1 {
                    warn!(service = self.service_name, upstream = %self.authority, %error, "upstream unreachable");
                } else {
                    debug!(service = self.service_name, upstream = %self.authority, %error, "upstream still unreachable");
                }
                Err(error)
            }
        }
    }

    /// Connects with `TCP_NODELAY` (gRPC messages are small and latency-bound)
    /// and hands the HTTP/2 connection to its own task.
    async fn dial(&self) -> Result<SendRequest<Incoming>, ProxyError> {
        let handshake = async {
            let stream = TcpStream::connect(self.authority.as_str()).await.map_err(ProxyError::Connect)?;
            stream.set_nodelay(true).map_err(ProxyError::Connect)?;
            self.http2_client.handshake(TokioIo::new(stream)).await.map_err(ProxyError::Handshake)
        };
        let (sender, connection) = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| ProxyError::ConnectTimeout(self.connect_timeout))??;
        let service = self.service_name;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(service, %error, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }
}

// === impl UpstreamConnection ===

impl UpstreamConnection {
    fn is_open(&self) -> bool {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|sender| !sender.is_closed())
    }

    /// Puts `request` on the connection if it is open, else hands it back.
    /// The returned future owns everything it needs, so the lock is released
    /// before the call is awaited.
    #[allow(clippy::result_large_err)] // the `Err` is the request itself, handed back without boxing it
    fn try_send(
        &self,
        request: Request<Incoming>,
    ) -> Result<impl Future<Output = SendOutcome> + Send + use<>, Request<Incoming>> {
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        match sender.as_mut() {
            Some(open) if !open.is_closed() => Ok(open.try_send_request(request)),
            _ => Err(request),
        }
    }
}
