//! The gateway's own health, `Check("mesh.gateway")`, through a real gateway
//! on `127.0.0.1:0` whose only upstream is down: the mesh is `NOT_SERVING`, the
//! gateway itself `SERVING` (what Kubernetes probes and the compose healthcheck
//! ask), without a token even when authentication is on, and `NOT_SERVING` from
//! the start of its drain, which ends a `Watch` on it.

use std::sync::Arc;

use mesh_gateway::{GATEWAY_HEALTH_SERVICE, GatewayConfig, GatewayError, GatewayRuntime, TokenConfig};
use mesh_kit::CancellationToken;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct TestGateway {
    channel: Channel,
    shutdown: CancellationToken,
    serving: JoinHandle<Result<(), GatewayError>>,
}

impl TestGateway {
    async fn start(config: GatewayConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the gateway");
        let address = listener.local_addr().expect("gateway address");
        let (_config_sender, config) = watch::channel(Arc::new(config));
        let shutdown = CancellationToken::new();
        let runtime = GatewayRuntime { listener, admin_listener: None, config, shutdown: shutdown.clone() };
        let serving = tokio::spawn(mesh_gateway::run(runtime));
        // Bound already: the connection is accepted as soon as the gateway runs.
        let channel =
            Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.expect("gateway reachable");
        Self { channel, shutdown, serving }
    }
}

/// An upstream address that refuses connections: bound, then closed.
fn refusing_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to close");
    format!("http://{}", listener.local_addr().expect("its address"))
}

async fn check(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let response = health.check(HealthCheckRequest { service: service.to_owned() }).await;
    response.unwrap_or_else(|status| panic!("Check({service:?}): {status:?}")).into_inner().status()
}

#[tokio::test]
async fn the_gateway_serves_with_its_upstream_down_and_stops_serving_when_it_drains() {
    // Authentication on: one token, which the probes below never send.
    let operator = TokenConfig {
        name: "ops".to_owned(),
        sha256: "0".repeat(64),
        allow: vec!["*".to_owned()],
        rate_limit_per_second: 0,
        rate_limit_burst: 0,
    };
    let config = GatewayConfig {
        cache_upstream: Some(refusing_upstream()),
        tokens: vec![operator],
        access_log: false,
        ..GatewayConfig::default()
    };
    let gateway = TestGateway::start(config).await;
    let mut health = HealthClient::new(gateway.channel.clone());

    assert_eq!(check(&mut health, "").await, ServingStatus::NotServing, "the mesh: its only upstream is down");
    assert_eq!(check(&mut health, "mesh.cache.v1.Cache").await, ServingStatus::NotServing);
    assert_eq!(GATEWAY_HEALTH_SERVICE, "mesh.gateway", "the name the probes in k8s/ and compose.yaml ask for");
    assert_eq!(check(&mut health, GATEWAY_HEALTH_SERVICE).await, ServingStatus::Serving, "the gateway itself");

    let mut watch = health
        .watch(HealthCheckRequest { service: GATEWAY_HEALTH_SERVICE.to_owned() })
        .await
        .expect("watch the gateway")
        .into_inner();
    let first = watch.message().await.expect("a first message").expect("the stream is open");
    assert_eq!(first.status(), ServingStatus::Serving);

    gateway.shutdown.cancel();
    let on_drain = watch.message().await.expect("a message on the drain").expect("sent before the end");
    assert_eq!(on_drain.status(), ServingStatus::NotServing, "draining");
    assert!(watch.message().await.expect("a clean end").is_none(), "the watch ends, so it does not hold up the drain");
    gateway.serving.await.expect("gateway task").expect("the gateway drains cleanly");
}
