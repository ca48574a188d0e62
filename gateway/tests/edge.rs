//! The gateway's production layers end to end, against real upstreams on
//! `127.0.0.1:0`: a small raw HTTP/2 upstream in this process where the test
//! needs to see or hold what arrives, and real `mesh serve cache` processes
//! where the behaviour is about processes (kill -9, restart). Covers the auth
//! matrix, rate limits, shedding, deadlines and the per-hop budget, hot
//! reload of a token on an open connection, an upstream's death and
//! recovery, and balancing across two endpoints while one is killed.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use mesh_gateway::GatewayConfig;
use mesh_kit::config::ConfigWatch;
use mesh_kit::{CancellationToken, ConfigSource};
use mesh_proto::cache::v1::cache_client::CacheClient;
use mesh_proto::cache::v1::{GetOrLeaseRequest, SetRequest};
use support::{
    RawBody, RawHttp2Server, TestGateway, config_for, get, grpc_ok, reason_of, scrape_metrics, sha256_hex, token,
    with_token,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::{Code, Status};
use tonic_types::StatusExt;

// === a raw upstream ===

/// An HTTP/2 upstream that answers every call with an empty message and OK,
/// except `GetOrLease`, which it holds until the caller goes away, and
/// `Health/Check`, which it answers SERVING (the gateway probes it). It
/// reports the `grpc-timeout` of each call it receives, and counts held calls.
struct RawUpstream {
    server: RawHttp2Server,
    grpc_timeouts: mpsc::UnboundedReceiver<Option<String>>,
    held_calls: watch::Receiver<usize>,
}

/// Counts a held call until the upstream drops it.
struct HeldCall(watch::Sender<usize>);

impl Drop for HeldCall {
    fn drop(&mut self) {
        self.0.send_modify(|held| *held -= 1);
    }
}

async fn answer(
    request: Request<Incoming>,
    grpc_timeouts: mpsc::UnboundedSender<Option<String>>,
    held_calls: Arc<watch::Sender<usize>>,
) -> Result<Response<RawBody>, Infallible> {
    let is_health_check = request.uri().path() == "/grpc.health.v1.Health/Check";
    // The gateway's own health probes are not the calls the tests make.
    if !is_health_check {
        let grpc_timeout = request.headers().get("grpc-timeout").map(|value| value.to_str().unwrap().to_owned());
        let _ = grpc_timeouts.send(grpc_timeout);
    }
    if request.uri().path().ends_with("/GetOrLease") {
        held_calls.send_modify(|held| *held += 1);
        let _held = HeldCall(watch::Sender::clone(&held_calls));
        // Held until hyper drops this future, i.e. the caller or the gateway gave up.
        std::future::pending::<()>().await;
    }
    // HealthCheckResponse { status: SERVING } to the probes, an empty message to the rest.
    let payload: &[u8] = if is_health_check { &[0x08, 0x01] } else { &[] };
    Ok(grpc_ok(payload))
}

impl RawUpstream {
    async fn start() -> Self {
        let (timeouts_sender, grpc_timeouts) = mpsc::unbounded_channel();
        let (held_sender, held_calls) = watch::channel(0);
        let held_sender = Arc::new(held_sender);
        let server =
            RawHttp2Server::start(move |request| answer(request, timeouts_sender.clone(), Arc::clone(&held_sender)))
                .await;
        Self { server, grpc_timeouts, held_calls }
    }

    fn uri(&self) -> String {
        self.server.uri()
    }
}

// === `mesh serve cache` processes ===

/// The `mesh` binary beside this test's executable (`target/<profile>/mesh`).
fn mesh_binary() -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = test_exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join("mesh");
    assert!(binary.exists(), "{} is missing: run `cargo build -p mesh` before these tests", binary.display());
    binary
}

/// A real Cache service in its own process, killed when dropped.
struct CacheProcess {
    child: Child,
    address: SocketAddr,
}

impl CacheProcess {
    /// Starts `mesh serve cache` on `listen` (port 0 for any) and waits for
    /// the line where it prints its address, which it prints once bound.
    fn start(listen: &str) -> Self {
        let mut child = Command::new(mesh_binary())
            .args(["serve", "cache", "--listen", listen])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mesh serve cache");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the address line");
        let address = line
            .trim()
            .strip_prefix("cache")
            .and_then(|rest| rest.trim().strip_prefix("http://"))
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("expected `cache  http://ADDR`, got {line:?}"));
        Self { child, address }
    }

    fn uri(&self) -> String {
        format!("http://{}", self.address)
    }

    /// SIGKILL, as an OOM killer or a crash would: no drain, no goodbye.
    fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for CacheProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === tests ===

#[tokio::test]
async fn the_auth_matrix() {
    let upstream = RawUpstream::start().await;
    let mut config = config_for(&upstream.uri());
    config.tokens =
        vec![token("reader", "reader-secret", &["mesh.cache.v1.Cache/Get"]), token("admin", "admin-secret", &["*"])];
    let gateway = TestGateway::start(config).await;
    let mut cache = CacheClient::new(gateway.connect().await);
    let set = || SetRequest { key: "k".into(), value: b"v".to_vec(), ..SetRequest::default() };

    let missing = cache.get(get("k")).await.expect_err("no credentials");
    assert_eq!((missing.code(), reason_of(&missing).as_str()), (Code::Unauthenticated, "CREDENTIALS_MISSING"));
    let wrong = cache.get(with_token(get("k"), "guess")).await.expect_err("unknown token");
    assert_eq!((wrong.code(), reason_of(&wrong).as_str()), (Code::Unauthenticated, "CREDENTIALS_INVALID"));
    assert!(!wrong.message().contains("guess"), "the credential leaked: {}", wrong.message());
    cache.get(with_token(get("k"), "reader-secret")).await.expect("the reader may read");
    let denied = cache.set(with_token(set(), "reader-secret")).await.expect_err("the reader may not write");
    assert_eq!((denied.code(), reason_of(&denied).as_str()), (Code::PermissionDenied, "METHOD_NOT_ALLOWED"));
    cache.set(with_token(set(), "admin-secret")).await.expect("the admin may write");
    let mut health = tonic_health::pb::health_client::HealthClient::new(gateway.connect().await);
    health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health is public by default");
    gateway.stop().await;
}

#[tokio::test]
async fn the_admin_port_serves_prometheus_metrics_of_the_calls() {
    let upstream = RawUpstream::start().await;
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the admin port");
    let admin_address = admin_listener.local_addr().expect("admin address");
    let (_sender, config) = watch::channel(Arc::new(config_for(&upstream.uri())));
    let gateway = TestGateway::start_with(config, Some(admin_listener), None).await;
    let mut cache = CacheClient::new(gateway.connect().await);
    cache.get(get("k")).await.expect("get passes");

    let scrape = scrape_metrics(admin_address).await;

    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    let get_series = r#"mesh_gateway_calls_total{service="mesh.cache.v1.Cache",method="Get",code="0"} 1"#;
    assert!(scrape.contains(get_series), "{scrape}");
    assert!(scrape.contains("mesh_gateway_call_duration_seconds_bucket"), "{scrape}");
    let endpoint_series = format!(
        r#"mesh_gateway_endpoint_in_service{{service="mesh.cache.v1.Cache",endpoint="{}"}} 1"#,
        upstream.server.address
    );
    assert!(scrape.contains(&endpoint_series), "{scrape}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_caller_over_its_rate_is_told_when_to_retry() {
    let upstream = RawUpstream::start().await;
    let mut config = config_for(&upstream.uri());
    let mut limited = token("batch-job", "batch-secret", &["*"]);
    // One a second with a burst of 2: the third call within a test run is over, however fast the machine.
    limited.rate_limit_per_second = 1;
    limited.rate_limit_burst = 2;
    config.tokens = vec![limited];
    let gateway = TestGateway::start(config).await;
    let mut cache = CacheClient::new(gateway.connect().await);

    cache.get(with_token(get("a"), "batch-secret")).await.expect("within the burst");
    cache.get(with_token(get("b"), "batch-secret")).await.expect("within the burst");
    let limited = cache.get(with_token(get("c"), "batch-secret")).await.expect_err("over the rate");

    assert_eq!((limited.code(), reason_of(&limited).as_str()), (Code::ResourceExhausted, "RATE_LIMITED"));
    let retry_delay = limited.get_error_details().retry_info().and_then(|info| info.retry_delay).expect("RetryInfo");
    assert!(retry_delay > Duration::ZERO && retry_delay <= Duration::from_secs(1), "{retry_delay:?}");
    gateway.stop().await;
}

#[tokio::test]
async fn an_overload_burst_is_shed_at_once_and_the_held_calls_are_unharmed() {
    const LIMIT: usize = 4;
    const BURST: usize = 20;
    let mut upstream = RawUpstream::start().await;
    let config = GatewayConfig { max_concurrent_calls: LIMIT, ..config_for(&upstream.uri()) };
    let gateway = TestGateway::start(config).await;
    let cache = CacheClient::new(gateway.connect().await);

    let mut held = JoinSet::new();
    for _ in 0..LIMIT {
        let mut client = cache.clone();
        held.spawn(
            async move { client.get_or_lease(GetOrLeaseRequest { key: "hot".into(), ..Default::default() }).await },
        );
    }
    upstream.held_calls.wait_for(|count| *count == LIMIT).await.expect("upstream running");
    let mut burst = JoinSet::new();
    for index in 0..BURST {
        let mut client = cache.clone();
        burst.spawn(async move { client.get(get(&format!("k{index}"))).await });
    }
    let shed = burst.join_all().await;

    assert_eq!(shed.len(), BURST);
    for outcome in shed {
        let status = outcome.expect_err("the gateway is full");
        assert_eq!((status.code(), reason_of(&status).as_str()), (Code::Unavailable, "OVERLOADED"));
    }
    assert_eq!(*upstream.held_calls.borrow(), LIMIT, "the held calls are still in flight");
    held.shutdown().await;
    upstream.held_calls.wait_for(|count| *count == 0).await.expect("upstream running");
    let mut client = cache.clone();
    client.get(get("after")).await.expect("slots are free again once the held calls ended");
    gateway.stop().await;
}

#[tokio::test]
async fn deadlines_are_capped_defaulted_forwarded_and_expire_as_deadline_exceeded() {
    let mut upstream = RawUpstream::start().await;
    let mut config = config_for(&upstream.uri());
    config.default_deadline = Duration::from_secs(7);
    config.routes.get_mut("mesh.cache.v1.Cache").expect("cache route by default").max_deadline =
        Some(Duration::from_millis(300));
    let gateway = TestGateway::start(config).await;
    let mut cache = CacheClient::new(gateway.connect().await);

    let mut long_deadline = tonic::Request::new(get("k"));
    long_deadline.set_timeout(Duration::from_secs(60));
    cache.get(long_deadline).await.expect("get passes");
    let forwarded = upstream.grpc_timeouts.recv().await.flatten().expect("a grpc-timeout upstream");
    let forwarded = mesh_kit::correlation::parse_grpc_timeout(&forwarded).expect("a valid grpc-timeout");
    assert!(forwarded <= Duration::from_millis(300), "capped to the route's maximum, got {forwarded:?}");

    let started = Instant::now();
    let mut held = tonic::Request::new(GetOrLeaseRequest { key: "hot".into(), ..Default::default() });
    held.set_timeout(Duration::from_secs(60));
    let expired = cache.get_or_lease(held).await.expect_err("the upstream never answers");
    assert_eq!((expired.code(), reason_of(&expired).as_str()), (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"));
    assert!(started.elapsed() < Duration::from_secs(30), "the cap applied, not the caller's 60 s");
    upstream.held_calls.wait_for(|count| *count == 0).await.expect("the expired call was cancelled upstream");
    gateway.stop().await;
}

#[tokio::test]
async fn a_token_added_to_the_file_works_on_the_open_connection() {
    let upstream = RawUpstream::start().await;
    let directory = std::env::temp_dir().join(format!("mesh-gateway-reload-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("mesh.toml");
    let write_config = |tokens: &[(&str, &str)]| {
        let mut text = format!("[gateway]\ncache_upstream = \"{}\"\naccess_log = false\n", upstream.uri());
        for (name, secret) in tokens {
            let sha256 = sha256_hex(secret);
            write!(text, "[[gateway.tokens]]\nname = \"{name}\"\nsha256 = \"{sha256}\"\nallow = [\"*\"]\n").unwrap();
        }
        // Written whole and renamed, so the watcher never reads half a file.
        let staging = directory.join("mesh.toml.new");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(&staging, &path).unwrap();
    };
    write_config(&[("first", "first-secret")]);
    let source = ConfigSource { file: Some(path.clone()), env: BTreeMap::new() };
    let shutdown = CancellationToken::new();
    let config: ConfigWatch<GatewayConfig> =
        mesh_kit::config::load_and_watch(source, Duration::from_millis(20), shutdown.clone()).expect("valid file");
    let mut config_seen_by_test = config.clone();
    let gateway = TestGateway::start_with(config, None, None).await;
    let mut cache = CacheClient::new(gateway.connect().await);

    cache.get(with_token(get("k"), "first-secret")).await.expect("the first token works");
    let refused = cache.get(with_token(get("k"), "second-secret")).await.expect_err("not configured yet");
    assert_eq!(refused.code(), Code::Unauthenticated);

    write_config(&[("first", "first-secret"), ("second", "second-secret")]);
    config_seen_by_test.changed().await.expect("the file change is loaded");
    // The gateway applies the change on its own task; bounded, and each try is a real call on the same connection.
    let mut outcome = Err(Status::unknown("not tried"));
    for _ in 0..200 {
        outcome = cache.get(with_token(get("k"), "second-secret")).await;
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    outcome.expect("the new token works without reconnecting");
    cache.get(with_token(get("k"), "first-secret")).await.expect("the old token still works");
    gateway.stop().await;
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_killed_upstream_is_unavailable_within_a_second_and_back_within_two_of_its_restart() {
    let cache_process = CacheProcess::start("127.0.0.1:0");
    let address = cache_process.address;
    let gateway = TestGateway::start(config_for(&cache_process.uri())).await;
    let mut cache = CacheClient::new(gateway.connect().await);
    cache.get(get("k")).await.expect("the upstream serves");

    cache_process.kill_9();
    let killed_at = Instant::now();
    let status = cache.get(get("k")).await.expect_err("the upstream is dead");
    assert_eq!((status.code(), reason_of(&status).as_str()), (Code::Unavailable, "UPSTREAM_UNAVAILABLE"));
    assert!(killed_at.elapsed() < Duration::from_secs(1), "took {:?}", killed_at.elapsed());

    let restarted = CacheProcess::start(&address.to_string());
    let restarted_at = Instant::now();
    // Until the first call that works: bounded by the two seconds the gateway has.
    let mut outcome = cache.get(get("k")).await;
    while outcome.is_err() && restarted_at.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        outcome = cache.get(get("k")).await;
    }
    outcome.expect("calls pass again within 2 s of the restart");
    drop(restarted);
    gateway.stop().await;
}

#[tokio::test]
async fn with_two_endpoints_killing_one_fails_no_idempotent_call() {
    const CALLERS: usize = 8;
    const CALLS_PER_CALLER: usize = 150;
    let survivor = CacheProcess::start("127.0.0.1:0");
    let victim = CacheProcess::start("127.0.0.1:0");
    let config = config_for(&format!("{},{}", survivor.uri(), victim.uri()));
    let gateway = TestGateway::start(config).await;
    let cache = CacheClient::new(gateway.connect().await);
    let (half_done_sender, mut half_done) = mpsc::channel(CALLERS);

    let mut callers = JoinSet::new();
    for caller in 0..CALLERS {
        let mut client = cache.clone();
        let half_done_sender = half_done_sender.clone();
        callers.spawn(async move {
            let mut failures = Vec::new();
            for call in 0..CALLS_PER_CALLER {
                if call == CALLS_PER_CALLER / 2 {
                    let _ = half_done_sender.send(()).await;
                }
                if let Err(status) = client.get(get(&format!("caller{caller}-{call}"))).await {
                    failures.push(status);
                }
            }
            failures
        });
    }
    // Killed while every caller is mid-run, so calls are in flight on it.
    half_done.recv().await.expect("a caller reached half way");
    victim.kill_9();

    let failures: Vec<Status> = callers.join_all().await.into_iter().flatten().collect();
    assert!(failures.is_empty(), "{} idempotent calls failed, first: {:?}", failures.len(), failures.first());
    drop(survivor);
    gateway.stop().await;
}
