//! What the gateway's integration tests share: a real gateway on
//! `127.0.0.1:0` with `connect`/`stop`, the HTTP/2 server under each test's
//! raw upstream (the test writes the answers), and the small config, call
//! and probe helpers around them. Upstreams whose behaviour a test file is
//! about (what they hold, count or report) stay in that file.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of this module

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_gateway::{GatewayConfig, GatewayError, GatewayRuntime, Resolve, TokenConfig};
use mesh_kit::CancellationToken;
use mesh_kit::config::ConfigWatch;
use mesh_proto::cache::v1::GetRequest;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

// === the gateway ===

/// A gateway serving on `127.0.0.1:0` in a task of the test's runtime.
pub struct TestGateway {
    pub address: SocketAddr,
    shutdown: CancellationToken,
    serving: JoinHandle<Result<(), GatewayError>>,
}

impl TestGateway {
    /// A gateway on `config` for its whole life: the watch's sender is
    /// dropped here, so nothing ever reloads it.
    pub async fn start(config: GatewayConfig) -> Self {
        let (_sender, config) = watch::channel(Arc::new(config));
        Self::start_with(config, None, None).await
    }

    /// A gateway following `config`, serving `/metrics` on `admin_listener`
    /// when given, and resolving upstream names with `resolver` when given
    /// (the system's resolver otherwise).
    pub async fn start_with(
        config: ConfigWatch<GatewayConfig>,
        admin_listener: Option<TcpListener>,
        resolver: Option<Arc<dyn Resolve>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the gateway");
        let address = listener.local_addr().expect("gateway address");
        let shutdown = CancellationToken::new();
        let runtime = GatewayRuntime { listener, admin_listener, config, shutdown: shutdown.clone() };
        let serving = match resolver {
            Some(resolver) => tokio::spawn(mesh_gateway::run_with_resolver(runtime, resolver)),
            None => tokio::spawn(mesh_gateway::run(runtime)),
        };
        Self { address, shutdown, serving }
    }

    /// One HTTP/2 connection, made now: the listener is bound, so the gateway
    /// accepts it as soon as its task runs.
    pub async fn connect(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.address)).unwrap().connect().await.expect("gateway reachable")
    }

    /// A channel that connects on its first call.
    pub fn connect_lazy(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.address)).unwrap().connect_lazy()
    }

    /// Starts the drain without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Drains the gateway and waits until it has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.serving.await.expect("gateway task").expect("gateway drains cleanly");
    }
}

/// The gateway's settings with `upstream` (one URI, or several joined by
/// commas) as the Cache upstream and the access log off.
pub fn config_for(upstream: &str) -> GatewayConfig {
    GatewayConfig { cache_upstream: Some(upstream.to_owned()), access_log: false, ..GatewayConfig::default() }
}

/// An address on which nothing listens: bound, then closed, so connecting
/// is refused.
pub fn refusing_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to close");
    listener.local_addr().expect("its address")
}

// === raw upstreams ===

/// The body of a raw upstream's answer: frames known up front.
pub type RawBody = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// `payload` framed as one uncompressed gRPC message.
pub fn grpc_message(payload: &[u8]) -> Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(payload);
    framed.into()
}

/// A gRPC answer: one message holding `payload`, then OK in the trailers.
pub fn grpc_ok(payload: &[u8]) -> Response<RawBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames = vec![Ok(Frame::data(grpc_message(payload))), Ok(Frame::trailers(trailers))];
    let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    response.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
    response
}

/// HTTP/2 on `127.0.0.1:0` where `answer` answers every request of every
/// connection; a test's raw upstream wraps one, so the gateway's traffic
/// arrives at code the test controls byte for byte. Stops when dropped.
pub struct RawHttp2Server {
    pub address: SocketAddr,
    serving: JoinHandle<()>,
}

impl RawHttp2Server {
    pub async fn start<Answer, Answering>(answer: Answer) -> Self
    where
        Answer: Fn(Request<Incoming>) -> Answering + Clone + Send + Sync + 'static,
        Answering: Future<Output = Result<Response<RawBody>, Infallible>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the upstream");
        let address = listener.local_addr().expect("upstream address");
        let serving = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let service = hyper::service::service_fn(answer.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { address, serving }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for RawHttp2Server {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

// === calls ===

pub fn get(key: &str) -> GetRequest {
    GetRequest { key: key.to_owned() }
}

/// The `ErrorInfo` reason of `status`, empty when it has none.
pub fn reason_of(status: &Status) -> String {
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

/// The lowercase hex SHA-256 of `token`, as the gateway's token entries hold it.
pub fn sha256_hex(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().fold(String::new(), |mut hex, byte| {
        write!(hex, "{byte:02x}").expect("writing to a String cannot fail");
        hex
    })
}

/// A token entry named `name` for the bearer secret `secret`, allowed the
/// methods in `allow`, without a rate limit.
pub fn token(name: &str, secret: &str, allow: &[&str]) -> TokenConfig {
    TokenConfig {
        name: name.to_owned(),
        sha256: sha256_hex(secret),
        allow: allow.iter().map(|entry| (*entry).to_owned()).collect(),
        rate_limit_per_second: 0,
        rate_limit_burst: 0,
    }
}

/// `message` with `secret` as its bearer token.
pub fn with_token<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

// === probes ===

/// `Check(service)` on the gateway's health service.
pub async fn check_health(health: &mut HealthClient<Channel>, service: &str) -> Result<ServingStatus, Status> {
    let response = health.check(HealthCheckRequest { service: service.to_owned() }).await?;
    Ok(response.into_inner().status())
}

/// The whole HTTP/1.1 response to `GET /metrics` on the admin port, headers included.
pub async fn scrape_metrics(admin_address: SocketAddr) -> String {
    let mut admin = TcpStream::connect(admin_address).await.expect("admin port reachable");
    admin.write_all(b"GET /metrics HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut scrape = String::new();
    admin.read_to_string(&mut scrape).await.expect("a whole response");
    scrape
}
