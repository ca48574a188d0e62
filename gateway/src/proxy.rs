//! Transparent HTTP/2 passthrough to one endpoint: the caller's request goes
//! out with its headers (`te`, `content-type`, metadata) and its body
//! untouched, only re-addressed and stamped with the call context and the
//! remaining deadline; the endpoint's response — headers, streamed body,
//! trailers, or a trailers-only error — comes back as it is.
//!
//! # Why the `h2` crate rather than hyper's client
//! hyper's HTTP/2 client waits for stream flow-control capacity before it
//! sends the first DATA frame, and a new stream gets capacity only once the
//! connection task has opened it, i.e. after it has written the HEADERS
//! frame. So every forwarded call cost two writes and two wake-ups of the
//! endpoint. Here a body already in hand (a unary request, or one kept for
//! replay) is handed to `h2` together with the headers, and both leave in one
//! write; a body still arriving is pumped by its own task, which waits for
//! capacity as usual.
//!
//! # Why a pool of connections
//! Each [`Endpoint`] keeps a small fixed set of HTTP/2 connections, redialled
//! when they close, and spreads calls over them in turn. One multiplexed
//! connection would let a single GOAWAY (e.g. `too_many_resets` after a
//! burst of cancelled calls) fail every call in flight, and would put all the
//! framing on one task. tonic's `Channel` would add a `Buffer`, about 10 % of
//! throughput.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use h2::client::SendRequest;
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mesh_kit::correlation::grpc_timeout_value;
use mesh_kit::header_names;
use tokio::net::TcpStream;
use tower::BoxError;
use tracing::{debug, info, warn};

use crate::config::GatewayConfig;
use crate::deadline::CallDeadline;
use crate::message_limit::LimitedRequestBody;
use crate::request_body::RequestBody;

/// Streams this gateway has reset that one upstream connection remembers.
/// HTTP/2 requires ignoring frames that still arrive for a reset stream; once
/// a reset stream is forgotten, such a frame is a protocol error that closes
/// the whole connection. A caller that cancels hundreds of calls at once makes
/// the gateway reset as many upstream streams, far above h2's default of 50.
const RESET_STREAMS_REMEMBERED: usize = 4096;
/// Receive windows as hyper's client sets them: room for large responses
/// without waiting for `WINDOW_UPDATE` frames.
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;

/// Headers whose value differs on every call. HPACK would add each value to
/// the connection's dynamic table, only to evict it a few calls later, and
/// search the table for it first. Marked sensitive, h2 sends them as
/// literals never indexed (RFC 7541 §6.2.3): the same headers for the
/// endpoint, without the table work (about 2,300 of 144,000 instructions per
/// call under `bench/gateway/callgrind`), and the table keeps the entries
/// that do repeat.
const PER_CALL_HEADERS: [HeaderName; 3] =
    [header_names::CORRELATION_ID, header_names::GRPC_TIMEOUT, header_names::TRACEPARENT];

/// The caller's request body as it reaches the proxy: checked against the message size limit.
pub(crate) type CallerBody = LimitedRequestBody<Incoming>;

/// The request the proxy sends: the caller's, with its body streamed or replayed.
pub(crate) type UpstreamRequest = Request<RequestBody<CallerBody>>;

/// Why a streamed request body stopped, set by the task that pumps it, so
/// the call's response reports the cause (e.g. a message over the limit)
/// rather than the reset it led to.
type BodyFailure = Arc<Mutex<Option<BoxError>>>;

/// One endpoint of a service and the connections to it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    service_name: &'static str,
    /// Replaces the caller's authority in forwarded requests; also the dial address.
    authority: Authority,
    connections: Box<[UpstreamConnection]>,
    /// Round-robin cursor over `connections`.
    next_connection: AtomicUsize,
    connect_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

/// One slot of the pool: an open connection, or none until the next call dials.
#[derive(Debug, Default)]
struct UpstreamConnection {
    /// The open connection. A std mutex, held only to clone the handle,
    /// never across an await.
    sender: Mutex<Option<SendRequest<Bytes>>>,
    /// Serialises dialling so one dead upstream is dialled once per slot, not
    /// once per waiting call; holds the consecutive failures, for logging.
    dialing: tokio::sync::Mutex<u32>,
    /// Dials that failed, ever; a call that waited for a dial and sees this
    /// change fails at once instead of dialling again.
    failed_dials: AtomicU64,
}

/// Why a call failed at one endpoint.
#[derive(Debug)]
pub(crate) enum SendFailure {
    /// Nothing reached the endpoint; the request is handed back, so it can
    /// go to another endpoint whatever its method.
    Unsent { request: Box<UpstreamRequest>, error: ProxyError },
    /// The request may have reached the endpoint.
    Failed(ProxyError),
}

/// Why a call could not be forwarded; answered UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("http/2 handshake failed: {0}")]
    Handshake(h2::Error),
    #[error("dialling failed moments ago")]
    RecentDialFailed,
    #[error("the new connection closed before the call could be sent")]
    ClosedOnArrival,
    #[error("call broken: {0}")]
    Call(h2::Error),
    /// The caller's request body failed (e.g. a message over the size
    /// limit); the endpoint is not at fault.
    #[error("the caller's request body failed: {0}")]
    RequestBody(#[source] BoxError),
}

impl ProxyError {
    /// Whether the failure says something about the endpoint, for outlier ejection.
    pub(crate) fn is_endpoint_fault(&self) -> bool {
        !matches!(self, Self::RequestBody(_))
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// The endpoint of `service_name` at `authority`; connects on first use.
    pub(crate) fn new(service_name: &'static str, authority: Authority, config: &GatewayConfig) -> Self {
        Self {
            service_name,
            authority,
            connections: (0..config.upstream_connections).map(|_| UpstreamConnection::default()).collect(),
            next_connection: AtomicUsize::new(0),
            connect_timeout: config.upstream_connect_timeout,
            keepalive_interval: config.keepalive_interval,
            keepalive_timeout: config.keepalive_timeout,
        }
    }

    /// The gRPC service this endpoint serves.
    pub(crate) fn service_name(&self) -> &'static str {
        self.service_name
    }

    /// Where this endpoint listens.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Forwards `request` and returns the endpoint's response as it is.
    /// Runs inside the call's context, which `stamp_trace_and_correlation_id` reads.
    pub(crate) async fn forward(&self, mut request: UpstreamRequest) -> Result<Response<UpstreamBody>, SendFailure> {
        self.address_to_endpoint(&mut request);
        self.send(request).await
    }

    /// Points the request at the endpoint (scheme and authority only; the
    /// path, headers and body stay), and adds the correlation id, the
    /// gateway span's `traceparent` and the deadline's remaining budget.
    fn address_to_endpoint(&self, request: &mut UpstreamRequest) {
        let mut uri_parts = std::mem::take(request.uri_mut()).into_parts();
        uri_parts.scheme = Some(Scheme::HTTP);
        uri_parts.authority = Some(self.authority.clone());
        *request.uri_mut() =
            Uri::from_parts(uri_parts).expect("a routed request has a path, and scheme and authority are set here");
        // The deadline layer has already capped or defaulted the caller's
        // deadline; that budget, not the caller's, is what goes upstream.
        mesh_kit::client::stamp_trace_and_correlation_id(request.headers_mut());
        // Recomputed per attempt, so a retry forwards only what is left of the caller's time.
        if let Some(CallDeadline(deadline)) = request.extensions().get::<CallDeadline>().copied() {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            request.headers_mut().insert(header_names::GRPC_TIMEOUT, grpc_timeout_value(remaining));
        }
        for name in PER_CALL_HEADERS {
            if let Some(value) = request.headers_mut().get_mut(name) {
                value.set_sensitive(true);
            }
        }
    }

    /// Sends `request` on the next connection of the pool, dialling it if it
    /// is closed. Until the headers are handed to `h2` nothing has left, so a
    /// failure before that hands the request back.
    async fn send(&self, request: UpstreamRequest) -> Result<Response<UpstreamBody>, SendFailure> {
        let connection_index = self.next_connection.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let connection = &self.connections[connection_index];
        let sender = if let Some(sender) = connection.ready_sender() {
            sender
        } else {
            if let Err(error) = self.redial(connection).await {
                return Err(SendFailure::Unsent { request: Box::new(request), error });
            }
            let Some(sender) = connection.ready_sender() else {
                return Err(SendFailure::Unsent { request: Box::new(request), error: ProxyError::ClosedOnArrival });
            };
            sender
        };
        let (response, body_failure) = start_call(sender, request).map_err(|error| {
            connection.forget_if_broken();
            SendFailure::Failed(error)
        })?;
        match response.await {
            Ok(response) => Ok(response.map(|body| UpstreamBody { body, is_data_done: false })),
            Err(error) => {
                let body_error =
                    body_failure.and_then(|failure| failure.lock().unwrap_or_else(PoisonError::into_inner).take());
                if let Some(body_error) = body_error {
                    return Err(SendFailure::Failed(ProxyError::RequestBody(body_error)));
                }
                connection.forget_if_broken();
                Err(SendFailure::Failed(ProxyError::Call(error)))
            }
        }
    }

    /// Opens a new connection in `connection`'s slot, unless another call did
    /// while this one waited, or a dial failed while this one waited.
    async fn redial(&self, connection: &UpstreamConnection) -> Result<(), ProxyError> {
        let failed_dials_before_waiting = connection.failed_dials.load(Ordering::Acquire);
        let mut consecutive_failures = connection.dialing.lock().await;
        if connection.ready_sender().is_some() {
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
    /// and hands the HTTP/2 connection, with its keepalive PINGs, to its own task.
    async fn dial(&self) -> Result<SendRequest<Bytes>, ProxyError> {
        let handshake = async {
            let stream = TcpStream::connect(self.authority.as_str()).await.map_err(ProxyError::Connect)?;
            stream.set_nodelay(true).map_err(ProxyError::Connect)?;
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW_BYTES)
                .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
                .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
                .enable_push(false)
                .handshake::<_, Bytes>(stream)
                .await
                .map_err(ProxyError::Handshake)
        };
        let (sender, mut connection) = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| ProxyError::ConnectTimeout(self.connect_timeout))??;
        let ping_pong = connection.ping_pong().expect("the ping handle is taken once, here");
        let (interval, timeout) = (self.keepalive_interval, self.keepalive_timeout);
        let service = self.service_name;
        tokio::spawn(async move {
            tokio::select! {
                outcome = &mut connection => {
                    if let Err(error) = outcome {
                        debug!(service, %error, "upstream connection closed with an error");
                    }
                }
                // Dropping the connection closes it; the next call finds the slot closed and redials.
                () = keep_alive(ping_pong, interval, timeout) => {
                    debug!(service, "upstream connection missed a keepalive ping; closing it");
                }
            }
        });
        Ok(sender)
    }
}

/// PINGs every `interval`; returns when one is not answered within `timeout`,
/// so a peer that vanished without closing its socket is noticed.
async fn keep_alive(mut ping_pong: PingPong, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Hands the headers, and the body if it is already in hand, to `h2`, so
/// they leave in one write; a body still arriving is pumped by a task,
/// which reports in the returned slot why it stopped early, if it did.
fn start_call(
    mut sender: SendRequest<Bytes>,
    request: UpstreamRequest,
) -> Result<(h2::client::ResponseFuture, Option<BodyFailure>), ProxyError> {
    let (parts, body) = request.into_parts();
    let is_end_of_stream = body.is_end_stream();
    let head = Request::from_parts(parts, ());
    let (response, mut send_stream) = sender.send_request(head, is_end_of_stream).map_err(ProxyError::Call)?;
    if is_end_of_stream {
        return Ok((response, None));
    }
    match body {
        RequestBody::Replay { data, trailers } => {
            // Kept whole and bounded by `retry_max_body_bytes`: h2 may buffer it before the stream has capacity.
            send_whole_body(&mut send_stream, data.unwrap_or_default(), trailers).map_err(ProxyError::Call)?;
        }
        mut streaming => {
            // A unary request usually arrived whole with its headers: then it goes out with them.
            let first_frame = streaming.frame().now_or_never();
            let sent = match first_frame {
                Some(Some(Ok(frame))) if streaming.is_end_stream() => match frame.into_data() {
                    Ok(data) => send_whole_body(&mut send_stream, data, None),
                    Err(frame) => send_whole_body(&mut send_stream, Bytes::new(), frame.into_trailers().ok()),
                },
                Some(None) => send_stream.send_data(Bytes::new(), true),
                Some(Some(Err(error))) => {
                    debug!(%error, "caller's request body failed");
                    send_stream.send_reset(h2::Reason::CANCEL);
                    return Err(ProxyError::RequestBody(error));
                }
                Some(Some(Ok(frame))) => {
                    let body_failure = BodyFailure::default();
                    tokio::spawn(pump_body(Some(frame), streaming, send_stream, Arc::clone(&body_failure)));
                    return Ok((response, Some(body_failure)));
                }
                None => {
                    let body_failure = BodyFailure::default();
                    tokio::spawn(pump_body(None, streaming, send_stream, Arc::clone(&body_failure)));
                    return Ok((response, Some(body_failure)));
                }
            };
            sent.map_err(ProxyError::Call)?;
        }
    }
    Ok((response, None))
}

fn send_whole_body(
    send_stream: &mut SendStream<Bytes>,
    data: Bytes,
    trailers: Option<HeaderMap>,
) -> Result<(), h2::Error> {
    match trailers {
        None => send_stream.send_data(data, true),
        Some(trailers) => {
            if !data.is_empty() {
                send_stream.send_data(data, false)?;
            }
            send_stream.send_trailers(trailers)
        }
    }
}

/// Streams the rest of a request body upstream, frame by frame, waiting for
/// flow-control capacity before each, so a fast caller cannot make the
/// gateway buffer without bound. Resets the stream if the caller's body breaks.
async fn pump_body(
    first_frame: Option<Frame<Bytes>>,
    mut body: RequestBody<CallerBody>,
    mut send_stream: SendStream<Bytes>,
    body_failure: BodyFailure,
) {
    let mut pending = first_frame;
    loop {
        let frame = match pending.take() {
            Some(frame) => frame,
            None => match body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    debug!(%error, "caller's request body failed");
                    // Recorded before the reset, so the response that the reset fails finds it.
                    *body_failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                    send_stream.send_reset(h2::Reason::CANCEL);
                    return;
                }
                None => {
                    let _ = send_stream.send_data(Bytes::new(), true);
                    return;
                }
            },
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if send_data_with_capacity(&mut send_stream, data, body.is_end_stream()).await.is_err() {
                    return;
                }
                if body.is_end_stream() {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            let _ = send_stream.send_trailers(trailers);
            return;
        }
    }
}

async fn send_data_with_capacity(
    send_stream: &mut SendStream<Bytes>,
    data: Bytes,
    is_end_of_stream: bool,
) -> Result<(), h2::Error> {
    send_stream.reserve_capacity(data.len());
    while send_stream.capacity() == 0 && !data.is_empty() {
        match std::future::poll_fn(|cx| send_stream.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error),
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        }
    }
    send_stream.send_data(data, is_end_of_stream)
}

// === impl UpstreamConnection ===

impl UpstreamConnection {
    /// A handle ready for a new stream, if the connection is open. A fresh
    /// clone has no stream of its own pending, so it is ready at once unless
    /// the connection has failed.
    fn ready_sender(&self) -> Option<SendRequest<Bytes>> {
        let mut slot = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = slot.as_ref()?.clone();
        if let Some(Ok(ready)) = sender.ready().now_or_never() {
            Some(ready)
        } else {
            *slot = None;
            None
        }
    }

    /// Drops the handle if its connection has failed, so the next call redials.
    fn forget_if_broken(&self) {
        drop(self.ready_sender());
    }
}

/// An endpoint's response body: DATA frames as they arrive, each released
/// back to flow control once handed on, then the trailers.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    body: RecvStream,
    is_data_done: bool,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.is_data_done {
            match ready!(self.body.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Releasing now lets the endpoint send more while the caller's connection takes this chunk.
                    let _ = self.body.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.is_data_done = true,
            }
        }
        match ready!(self.body.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
