//! The gateway's defences and its view of the upstreams, end to end against
//! real sockets: TLS and mutual TLS with certificates made at run time
//! (rcgen) and a tonic client over rustls; message size limits both ways;
//! the idle timeout's GOAWAY and the HTTP/2 limits seen by a raw `h2`
//! client; DNS re-resolution moving traffic between real upstreams without
//! failing a call in flight; and endpoints added by a reload being
//! health-checked and ejected like the first ones.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_gateway::{ClientCertificateConfig, GatewayConfig, Resolve, ResolveFuture};
use mesh_kit::CancellationToken;
use mesh_proto::cache::v1::cache_client::CacheClient;
use mesh_proto::cache::v1::{GetOrLeaseRequest, GetRequest, SetRequest};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use support::{
    RawBody, RawHttp2Server, TestGateway, check_health, config_for, get, grpc_message, grpc_ok, reason_of,
    refusing_address, scrape_metrics, token, with_token,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

// === a raw upstream ===

/// An HTTP/2 upstream: `Health/Check` answers SERVING; `GetOrLease` is held
/// until the test releases it; a call with `x-response-bytes: N` gets one
/// message of N bytes; anything else an empty message. Every call is counted.
struct RawUpstream {
    server: RawHttp2Server,
    calls: watch::Receiver<usize>,
    held_calls: watch::Receiver<usize>,
    release: watch::Sender<bool>,
}

/// Shared by every connection of one upstream.
struct UpstreamState {
    calls: watch::Sender<usize>,
    held_calls: watch::Sender<usize>,
    release: watch::Receiver<bool>,
}

async fn answer(request: Request<Incoming>, state: Arc<UpstreamState>) -> Result<Response<RawBody>, Infallible> {
    let path = request.uri().path().to_owned();
    let payload = if path == "/grpc.health.v1.Health/Check" {
        // HealthCheckResponse { status: SERVING }.
        vec![0x08, 0x01]
    } else if path.ends_with("/GetOrLease") {
        state.held_calls.send_modify(|held| *held += 1);
        let mut release = state.release.clone();
        let _ = release.wait_for(|released| *released).await;
        state.held_calls.send_modify(|held| *held -= 1);
        Vec::new()
    } else {
        state.calls.send_modify(|calls| *calls += 1);
        let response_bytes = request.headers().get("x-response-bytes").and_then(|value| value.to_str().ok());
        vec![0; response_bytes.and_then(|value| value.parse().ok()).unwrap_or(0)]
    };
    Ok(grpc_ok(&payload))
}

impl RawUpstream {
    async fn start() -> Self {
        let (calls_sender, calls) = watch::channel(0);
        let (held_sender, held_calls) = watch::channel(0);
        let (release, release_receiver) = watch::channel(false);
        let state = Arc::new(UpstreamState { calls: calls_sender, held_calls: held_sender, release: release_receiver });
        let server = RawHttp2Server::start(move |request| answer(request, Arc::clone(&state))).await;
        Self { server, calls, held_calls, release }
    }

    fn uri(&self) -> String {
        self.server.uri()
    }

    fn calls(&self) -> usize {
        *self.calls.borrow()
    }
}

// === certificates ===

/// A CA, and certificates it signed, written as PEM files in a fresh directory.
struct TestPki {
    directory: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, for a client.
struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TestPki {
    fn new(test_name: &str) -> Self {
        let directory = std::env::temp_dir().join(format!("mesh-gateway-{test_name}-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "mesh test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        Self { directory, ca }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.directory.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca.pem())
    }

    /// The gateway's certificate for `localhost`, and its key.
    fn server_files(&self) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.ca).unwrap();
        (self.write("server.pem", &certificate.pem()), self.write("server.key", &key.serialize_pem()))
    }

    /// A client certificate whose subject alternative name is `uri` and
    /// whose common name is `common_name`.
    fn client(&self, uri: &str, common_name: &str) -> ClientIdentity {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.ca).unwrap();
        ClientIdentity {
            chain: vec![certificate.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// A tonic channel to `address` over TLS (rustls, ALPN h2), trusting
/// `roots`, presenting `identity` if any. Connects at once, so a refused
/// handshake is an error here or on the first call.
async fn tls_channel(
    address: SocketAddr,
    roots: rustls::RootCertStore,
    identity: Option<&ClientIdentity>,
) -> Result<Channel, tonic::transport::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut client_config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let connect = tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(address).await?;
            let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    // The scheme only addresses the request; the connector above makes the connection TLS.
    Endpoint::from_shared(format!("http://localhost:{}", address.port())).unwrap().connect_with_connector(connect).await
}

async fn get_over_tls(
    address: SocketAddr,
    roots: rustls::RootCertStore,
    identity: Option<&ClientIdentity>,
    request: tonic::Request<GetRequest>,
) -> Result<(), Status> {
    let channel =
        tls_channel(address, roots, identity).await.map_err(|error| Status::unavailable(error.to_string()))?;
    CacheClient::new(channel).get(request).await.map(drop)
}

// === tests ===

#[tokio::test]
async fn mutual_tls_names_callers_by_their_certificate_alongside_tokens() {
    let upstream = RawUpstream::start().await;
    let pki = TestPki::new("mtls");
    let (cert_file, key_file) = pki.server_files();
    let mut config = config_for(&upstream.uri());
    config.tls_cert_file = Some(cert_file);
    config.tls_key_file = Some(key_file);
    config.tls_client_ca_file = Some(pki.ca_file());
    config.client_certificates = vec![ClientCertificateConfig {
        name: "billing".into(),
        subject: "spiffe://mesh/billing".into(),
        allow: vec!["mesh.cache.v1.Cache/Get".into()],
        rate_limit_per_second: 1,
        rate_limit_burst: 2,
    }];
    config.tokens = vec![token("admin", "admin-secret", &["*"])];
    let gateway = TestGateway::start(config).await;
    let billing = pki.client("spiffe://mesh/billing", "billing-job");
    let stranger = pki.client("spiffe://mesh/stranger", "stranger");

    let channel =
        tls_channel(gateway.address, pki.roots(), Some(&billing)).await.expect("billing's certificate is accepted");
    let mut cache = CacheClient::new(channel);
    cache.get(get("k")).await.expect("billing may read, named by its certificate alone");
    let set = SetRequest { key: "k".into(), value: b"v".to_vec(), ..SetRequest::default() };
    let denied = cache.set(set.clone()).await.expect_err("billing may not write");
    assert_eq!((denied.code(), reason_of(&denied).as_str()), (Code::PermissionDenied, "METHOD_NOT_ALLOWED"));
    cache.get(get("k")).await.expect("within billing's burst of 2");
    let limited = cache.get(get("k")).await.expect_err("billing's own rate limit");
    assert_eq!((limited.code(), reason_of(&limited).as_str()), (Code::ResourceExhausted, "RATE_LIMITED"));
    cache.set(with_token(set, "admin-secret")).await.expect("a token names the caller first, with its own rights");

    let unknown = get_over_tls(gateway.address, pki.roots(), Some(&stranger), tonic::Request::new(get("k"))).await;
    let unknown = unknown.expect_err("a certificate no entry knows names nobody");
    assert_eq!((unknown.code(), reason_of(&unknown).as_str()), (Code::Unauthenticated, "CREDENTIALS_MISSING"));

    let without_certificate =
        get_over_tls(gateway.address, pki.roots(), None, with_token(get("k"), "admin-secret")).await;
    let refused = without_certificate.expect_err("mutual TLS: no certificate, no connection");
    assert!(format!("{refused:?}").contains("CertificateRequired"), "{refused:?}");

    let plaintext = CacheClient::new(gateway.connect_lazy()).get(get("k")).await;
    assert!(plaintext.is_err(), "a plaintext h2c caller is not served on a TLS listener");
    assert_eq!(upstream.calls(), 3, "only the calls that passed reached the upstream");
    gateway.stop().await;
}

#[tokio::test]
async fn plain_tls_serves_callers_without_a_certificate() {
    let upstream = RawUpstream::start().await;
    let pki = TestPki::new("tls");
    let (cert_file, key_file) = pki.server_files();
    let mut config = config_for(&upstream.uri());
    config.tls_cert_file = Some(cert_file);
    config.tls_key_file = Some(key_file);
    let gateway = TestGateway::start(config).await;

    get_over_tls(gateway.address, pki.roots(), None, tonic::Request::new(get("k")))
        .await
        .expect("TLS without client authentication");
    let untrusted =
        get_over_tls(gateway.address, rustls::RootCertStore::empty(), None, tonic::Request::new(get("k"))).await;
    assert!(untrusted.is_err(), "a caller that does not trust the gateway's CA cannot connect");
    assert_eq!(upstream.calls(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn a_bad_tls_setting_stops_the_gateway_naming_the_setting() {
    let pki = TestPki::new("bad-tls");
    let config = GatewayConfig {
        tls_cert_file: Some(pki.write("server.pem", "not a certificate")),
        tls_key_file: Some(pki.write("server.key", "not a key")),
        ..GatewayConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = mesh_gateway::serve(listener, config, CancellationToken::new()).await.expect_err("refused at start");
    assert!(error.to_string().contains("tls_cert_file"), "{error}");
    assert!(Path::new(&pki.directory).exists());
}

#[tokio::test]
async fn oversized_messages_are_refused_resource_exhausted_in_both_directions() {
    const LIMIT: u32 = 64 * 1024;
    let upstream = RawUpstream::start().await;
    let config = GatewayConfig {
        max_request_message_bytes: LIMIT,
        max_response_message_bytes: LIMIT,
        ..config_for(&upstream.uri())
    };
    let gateway = TestGateway::start(config).await;
    let mut cache = CacheClient::new(gateway.connect().await);

    let small = SetRequest { key: "k".into(), value: vec![1; 1000], ..SetRequest::default() };
    cache.set(small).await.expect("a small message passes");
    let large = SetRequest { key: "k".into(), value: vec![1; 2 * LIMIT as usize], ..SetRequest::default() };
    let refused = cache.set(large).await.expect_err("a request message over the limit");
    assert_eq!((refused.code(), reason_of(&refused).as_str()), (Code::ResourceExhausted, "REQUEST_MESSAGE_TOO_LARGE"));
    assert!(refused.message().contains(&LIMIT.to_string()), "{}", refused.message());
    // Get is idempotent, so its body is read for replay first: the limit holds on that path too.
    let mut large_get = GetRequest { key: "x".repeat(2 * LIMIT as usize) };
    let refused = cache.get(std::mem::take(&mut large_get)).await.expect_err("an idempotent request over the limit");
    assert_eq!(reason_of(&refused), "REQUEST_MESSAGE_TOO_LARGE");

    let mut large_response = tonic::Request::new(get("k"));
    large_response.metadata_mut().insert("x-response-bytes", (2 * LIMIT).to_string().parse().unwrap());
    let refused = cache.get(large_response).await.expect_err("a response message over the limit");
    assert_eq!((refused.code(), reason_of(&refused).as_str()), (Code::ResourceExhausted, "RESPONSE_MESSAGE_TOO_LARGE"));
    let correlation_id =
        refused.get_error_details().error_info().map(|info| info.metadata.contains_key("correlation_id"));
    assert_eq!(correlation_id, Some(true), "the refusal carries the call's correlation id");

    cache.get(get("k")).await.expect("the connection serves on");
    // The streamed set's headers left before its body was read, so the upstream saw it start (then reset); the
    // idempotent get was read for replay first and never left.
    assert_eq!(upstream.calls(), 4, "the small set, the reset set, the refused response, and the last get");
    gateway.stop().await;
}

/// A raw HTTP/2 connection to the gateway after one completed `Get` (so the
/// gateway's SETTINGS have been read); the returned task ends when the
/// gateway closes the connection. Also returns the gateway's advertised
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
async fn raw_h2_connection(
    address: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>, usize) {
    let tcp = TcpStream::connect(address).await.unwrap();
    let (mut send_request, mut connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let call = async {
        let (response, mut body) = send_request.send_request(raw_call("/mesh.cache.v1.Cache/Get"), false).unwrap();
        body.send_data(grpc_message(&[]), true).unwrap();
        let mut response_body = response.await.expect("a response").into_body();
        while response_body.data().await.is_some() {}
        response_body.trailers().await.unwrap().expect("trailers")
    };
    let trailers = tokio::select! {
        trailers = call => trailers,
        outcome = &mut connection => panic!("connection ended early: {outcome:?}"),
    };
    assert_eq!(trailers["grpc-status"], "0");
    let max_streams = connection.max_concurrent_send_streams();
    (send_request, tokio::spawn(connection), max_streams)
}

fn raw_call(path: &str) -> Request<()> {
    Request::builder()
        .method("POST")
        .uri(format!("http://gateway{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_goaway_and_a_busy_one_is_kept() {
    let upstream = RawUpstream::start().await;
    let idle_timeout = Duration::from_millis(300);
    let config = GatewayConfig { idle_timeout, max_concurrent_streams: 77, ..config_for(&upstream.uri()) };
    let gateway = TestGateway::start(config).await;

    let (idle_sender, idle_connection, max_streams) = raw_h2_connection(gateway.address).await;
    assert_eq!(max_streams, 77, "max_concurrent_streams is what the gateway advertises");
    assert_eq!(upstream.calls(), 1);
    // The sender stays alive: an h2 client whose handles are all dropped would close the connection itself.
    // Bounded: the gateway must end the connection (GOAWAY, then close) well within ten idle timeouts.
    let closed = tokio::time::timeout(idle_timeout * 10, idle_connection).await;
    let ending = closed.expect("the idle connection was closed").expect("connection task");
    if let Err(error) = ending {
        assert_eq!(error.reason(), Some(h2::Reason::NO_ERROR), "closed gracefully, not by an error: {error}");
    }
    drop(idle_sender);

    let (mut busy_sender, mut busy_connection, _) = raw_h2_connection(gateway.address).await;
    let (held_response, mut held_body) =
        busy_sender.send_request(raw_call("/mesh.cache.v1.Cache/GetOrLease"), false).unwrap();
    held_body.send_data(grpc_message(&[]), true).unwrap();
    let mut held_calls = upstream.held_calls.clone();
    held_calls.wait_for(|held| *held == 1).await.unwrap();
    let still_open = tokio::time::timeout(idle_timeout * 3, &mut busy_connection).await;
    assert!(still_open.is_err(), "a connection with a call open is not idle");
    upstream.release.send(true).unwrap();
    let held_response = held_response.await.expect("the held call completes");
    assert_eq!(held_response.status(), 200);
    drop(busy_sender);
    gateway.stop().await;
}

#[tokio::test]
async fn an_oversized_header_block_is_refused_before_any_layer() {
    let upstream = RawUpstream::start().await;
    let config = GatewayConfig { max_header_list_bytes: 4096, ..config_for(&upstream.uri()) };
    let gateway = TestGateway::start(config).await;
    let mut cache = CacheClient::new(gateway.connect().await);

    let mut oversized = tonic::Request::new(get("k"));
    oversized.metadata_mut().insert("x-padding", "p".repeat(8192).parse().unwrap());
    let refused = cache.get(oversized).await.expect_err("a header block over max_header_list_bytes");
    assert_ne!(refused.code(), Code::Ok);
    assert_eq!(upstream.calls(), 0, "nothing reached the upstream");
    let mut cache = CacheClient::new(gateway.connect().await);
    cache.get(get("k")).await.expect("normal calls pass");
    gateway.stop().await;
}

/// Reads HTTP/2 frames from a raw socket until one of `frame_type` (without
/// the ACK flag) arrives; `None` if the connection ends first.
async fn read_until_frame(socket: &mut TcpStream, frame_type: u8) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut header = [0u8; 9];
        socket.read_exact(&mut header).await.ok()?;
        let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0; length];
        socket.read_exact(&mut payload).await.ok()?;
        let is_ack = header[4] & 0x1 != 0;
        if header[3] == frame_type && !is_ack {
            return Some(payload);
        }
    }
}

#[tokio::test]
async fn keepalive_pings_a_silent_caller_and_closes_the_connection_when_unanswered() {
    use tokio::io::AsyncWriteExt;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    let upstream = RawUpstream::start().await;
    let config = GatewayConfig {
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        idle_timeout: Duration::ZERO,
        ..config_for(&upstream.uri())
    };
    let gateway = TestGateway::start(config).await;
    let mut socket = TcpStream::connect(gateway.address).await.unwrap();
    // The client preface and an empty SETTINGS frame; then the socket never answers anything.
    socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let bounded = Duration::from_secs(10);
    let ping = tokio::time::timeout(bounded, read_until_frame(&mut socket, PING)).await.expect("a PING in time");
    assert_eq!(ping.map(|payload| payload.len()), Some(8), "the gateway pings a silent caller");
    let goaway = tokio::time::timeout(bounded, read_until_frame(&mut socket, GOAWAY)).await.expect("closed in time");
    // Either a GOAWAY or the socket closing ends a caller that stopped answering.
    if let Some(goaway) = goaway {
        assert!(goaway.len() >= 8, "a GOAWAY frame");
    }
    gateway.stop().await;
}

/// A resolver whose answer the test sets.
#[derive(Debug, Default)]
struct TestResolver {
    addresses: Mutex<Vec<SocketAddr>>,
    lookups: AtomicUsize,
}

impl TestResolver {
    fn answer(&self, addresses: &[SocketAddr]) {
        *self.addresses.lock().unwrap() = addresses.to_vec();
    }
}

impl Resolve for TestResolver {
    fn resolve<'a>(&'a self, host: &'a str, _port: u16) -> ResolveFuture<'a> {
        assert_eq!(host, "cache.mesh.test", "only names are resolved");
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let addresses = self.addresses.lock().unwrap().clone();
        Box::pin(async move { Ok(addresses) })
    }
}

/// Calls until `done` holds, at most 200 times; each try is a real call.
async fn call_until(cache: &mut CacheClient<Channel>, done: impl Fn() -> bool) {
    for _ in 0..200 {
        let _ = cache.get(get("k")).await;
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the condition never held");
}

#[tokio::test]
async fn a_re_resolved_name_moves_traffic_without_failing_a_call_in_flight() {
    let first = RawUpstream::start().await;
    let second = RawUpstream::start().await;
    let resolver = Arc::new(TestResolver::default());
    resolver.answer(&[first.server.address]);
    let config = GatewayConfig {
        dns_refresh_interval: Duration::from_millis(100),
        ..config_for("http://cache.mesh.test:50061")
    };
    let (_sender, config) = watch::channel(Arc::new(config));
    let gateway = TestGateway::start_with(config, None, Some(resolver.clone())).await;
    let mut cache = CacheClient::new(gateway.connect().await);

    call_until(&mut cache, || first.calls() > 0).await;
    let mut held_client = cache.clone();
    let held = tokio::spawn(async move {
        held_client.get_or_lease(GetOrLeaseRequest { key: "hot".into(), ..Default::default() }).await
    });
    first.held_calls.clone().wait_for(|held| *held == 1).await.unwrap();

    resolver.answer(&[second.server.address]);
    call_until(&mut cache, || second.calls() > 0).await;
    let calls_on_first = first.calls();
    for index in 0..20 {
        cache.get(get(&format!("k{index}"))).await.expect("the new endpoint serves");
    }
    assert_eq!(first.calls(), calls_on_first, "the removed address gets no new call");
    assert_eq!(*first.held_calls.borrow(), 1, "the call in flight on the removed address is untouched");
    first.release.send(true).unwrap();
    held.await.unwrap().expect("the call in flight on the removed address completes");

    resolver.answer(&[first.server.address, second.server.address]);
    let before = (first.calls(), second.calls());
    call_until(&mut cache, || first.calls() > before.0 && second.calls() > before.1).await;
    assert!(resolver.lookups.load(Ordering::Relaxed) >= 3);
    gateway.stop().await;
}

#[tokio::test]
async fn endpoints_added_by_reload_are_health_checked_and_ejected_like_the_first() {
    let live = RawUpstream::start().await;
    let dead_address = refusing_address();
    let dead = format!("http://{dead_address}");
    let config = GatewayConfig { health_poll_interval: Duration::from_millis(20), ..config_for(&dead) };
    let (config_sender, config_receiver) = watch::channel(Arc::new(config.clone()));
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_address = admin_listener.local_addr().unwrap();
    let gateway = TestGateway::start_with(config_receiver, Some(admin_listener), None).await;
    let mut health = HealthClient::new(gateway.connect().await);
    assert_eq!(check_health(&mut health, "").await.unwrap(), ServingStatus::NotServing, "the only endpoint is dead");

    let another_dead = refusing_address();
    let reloaded = GatewayConfig {
        cache_upstream: Some(format!("{dead},{},http://{another_dead}", live.uri())),
        outlier_consecutive_failures: 1,
        outlier_ejection_time: Duration::from_secs(60),
        ..config
    };
    config_sender.send(Arc::new(reloaded)).unwrap();
    let mut status = ServingStatus::Unknown;
    for _ in 0..200 {
        status = check_health(&mut health, "").await.unwrap();
        if status == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, ServingStatus::Serving, "the endpoint the reload added is health-checked");

    // The probe, not a call, finds the dead endpoints: balancing prefers the live one, so no call may ever pick them.
    let expected: Vec<String> = [
        (dead_address.to_string(), 0),
        (another_dead.to_string(), 0),
        (live.server.address.to_string(), 1),
    ]
    .iter()
    .map(|(endpoint, in_service)| {
        format!(
            r#"mesh_gateway_endpoint_in_service{{service="mesh.cache.v1.Cache",endpoint="{endpoint}"}} {in_service}"#
        )
    })
    .collect();
    let mut scrape = String::new();
    for _ in 0..200 {
        scrape = scrape_metrics(admin_address).await;
        if expected.iter().all(|series| scrape.contains(series)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for series in &expected {
        assert!(scrape.contains(series), "missing `{series}` in:\n{scrape}");
    }
    let mut cache = CacheClient::new(gateway.connect().await);
    for index in 0..30 {
        cache.get(get(&format!("k{index}"))).await.expect("no call fails while the dead endpoints are ejected");
    }
    assert_eq!(live.calls(), 30, "every call went to the live endpoint");
    gateway.stop().await;
}
