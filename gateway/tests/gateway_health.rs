//! The gateway's own health, `Check("mesh.gateway")`, through a real gateway
//! on `127.0.0.1:0` whose only upstream is down: the mesh is `NOT_SERVING`, the
//! gateway itself `SERVING` (what Kubernetes probes and the compose healthcheck
//! ask), without a token even when authentication is on, and `NOT_SERVING` from
//! the start of its drain, which ends a `Watch` on it.

mod support;

use mesh_gateway::{GATEWAY_HEALTH_SERVICE, GatewayConfig, TokenConfig};
use support::{TestGateway, check_health, refusing_address};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn check(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    check_health(health, service).await.unwrap_or_else(|status| panic!("Check({service:?}): {status:?}"))
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
        cache_upstream: Some(format!("http://{}", refusing_address())),
        tokens: vec![operator],
        access_log: false,
        ..GatewayConfig::default()
    };
    let gateway = TestGateway::start(config).await;
    let mut health = HealthClient::new(gateway.connect().await);

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

    gateway.begin_shutdown();
    let on_drain = watch.message().await.expect("a message on the drain").expect("sent before the end");
    assert_eq!(on_drain.status(), ServingStatus::NotServing, "draining");
    assert!(watch.message().await.expect("a clean end").is_none(), "the watch ends, so it does not hold up the drain");
    gateway.stop().await;
}
