//! The gateway in front of a real Cache upstream (a `mesh_kit::MeshServer`
//! serving a stub), both on `127.0.0.1:0`: calls pass through with their
//! correlation id, errors and streams intact; unknown services are refused by
//! name; health and reflection cover the mesh; and a burst of cancelled calls
//! leaves the other calls on the shared upstream connection alone.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::PathAndQuery;
use mesh_gateway::GatewayConfig;
use mesh_kit::{CancellationToken, MeshServer, RpcError, ServeError, ServerSettings};
use mesh_proto::cache::v1::cache_client::CacheClient;
use mesh_proto::cache::v1::cache_server::{Cache, CacheServer};
use mesh_proto::cache::v1::{
    CacheEntry, DeleteManyRequest, DeleteManyResponse, DeleteRequest, DeleteResponse, GetHealthRequest,
    GetHealthResponse, GetManyRequest, GetManyResponse, GetOrLeaseRequest, GetOrLeaseResponse, GetRequest, GetResponse,
    GetStatsRequest, GetStatsResponse, InvalidatePatternRequest, InvalidatePatternResponse, InvalidateTagsRequest,
    InvalidateTagsResponse, ReleaseLeaseRequest, ReleaseLeaseResponse, SetManyRequest, SetManyResponse, SetRequest,
    SetResponse, WarmRequest, WarmResponse,
};
use support::{TestGateway, check_health};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

// === the stub upstream ===

/// A Cache that answers `Get` with the correlation id it saw, refuses
/// `Delete` as `NOT_FOUND`, counts `Warm` batches as they arrive, and parks
/// `GetOrLease` until the caller goes away.
struct StubCache {
    warm_batches_received: watch::Sender<usize>,
    parked_calls: watch::Sender<usize>,
}

#[derive(Debug, thiserror::Error)]
enum StubError {
    #[error("key `{key}` not found")]
    KeyNotFound { key: String },
    #[error("the stub upstream does not implement this method")]
    NotInStub,
}

impl RpcError for StubError {
    fn code(&self) -> Code {
        match self {
            Self::KeyNotFound { .. } => Code::NotFound,
            Self::NotInStub => Code::Unimplemented,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::KeyNotFound { .. } => "KEY_NOT_FOUND",
            Self::NotInStub => "NOT_IN_STUB",
        }
    }

    fn domain(&self) -> &'static str {
        "mesh.cache.v1"
    }
}

fn not_in_stub<T>() -> Result<Response<T>, Status> {
    Err(mesh_kit::to_status(&StubError::NotInStub))
}

/// Counts a parked call until its handler is dropped, i.e. cancelled.
struct ParkedCall<'a>(&'a watch::Sender<usize>);

impl Drop for ParkedCall<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|parked| *parked -= 1);
    }
}

#[tonic::async_trait]
impl Cache for StubCache {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let seen_correlation_id = mesh_kit::correlation::current_correlation_id().expect("the kit sets the context");
        Ok(Response::new(GetResponse {
            found: true,
            value: seen_correlation_id.as_str().as_bytes().to_vec(),
            tags: vec![request.into_inner().key],
            expire_time: None,
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(mesh_kit::to_status(&StubError::KeyNotFound { key: request.into_inner().key }))
    }

    async fn warm(&self, request: Request<Streaming<WarmRequest>>) -> Result<Response<WarmResponse>, Status> {
        let mut batches = request.into_inner();
        let mut loaded_count = 0;
        while let Some(batch) = batches.message().await? {
            loaded_count += batch.entries.len() as u64;
            self.warm_batches_received.send_modify(|received| *received += 1);
        }
        Ok(Response::new(WarmResponse { loaded_count, skipped_count: 0, rejected: Vec::new() }))
    }

    async fn get_or_lease(&self, _request: Request<GetOrLeaseRequest>) -> Result<Response<GetOrLeaseResponse>, Status> {
        self.parked_calls.send_modify(|parked| *parked += 1);
        let _parked = ParkedCall(&self.parked_calls);
        let never: Infallible = std::future::pending().await;
        match never {}
    }

    async fn set(&self, _request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        not_in_stub()
    }

    async fn get_many(&self, _request: Request<GetManyRequest>) -> Result<Response<GetManyResponse>, Status> {
        not_in_stub()
    }

    async fn set_many(&self, _request: Request<SetManyRequest>) -> Result<Response<SetManyResponse>, Status> {
        not_in_stub()
    }

    async fn delete_many(&self, _request: Request<DeleteManyRequest>) -> Result<Response<DeleteManyResponse>, Status> {
        not_in_stub()
    }

    async fn invalidate_tags(
        &self,
        _request: Request<InvalidateTagsRequest>,
    ) -> Result<Response<InvalidateTagsResponse>, Status> {
        not_in_stub()
    }

    async fn invalidate_pattern(
        &self,
        _request: Request<InvalidatePatternRequest>,
    ) -> Result<Response<InvalidatePatternResponse>, Status> {
        not_in_stub()
    }

    async fn release_lease(
        &self,
        _request: Request<ReleaseLeaseRequest>,
    ) -> Result<Response<ReleaseLeaseResponse>, Status> {
        not_in_stub()
    }

    async fn get_stats(&self, _request: Request<GetStatsRequest>) -> Result<Response<GetStatsResponse>, Status> {
        not_in_stub()
    }

    async fn get_health(&self, _request: Request<GetHealthRequest>) -> Result<Response<GetHealthResponse>, Status> {
        not_in_stub()
    }
}

// === harness ===

struct TestUpstream {
    address: SocketAddr,
    shutdown: CancellationToken,
    serving: JoinHandle<Result<(), ServeError>>,
    warm_batches_received: watch::Receiver<usize>,
    parked_calls: watch::Receiver<usize>,
}

impl TestUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the upstream");
        let address = listener.local_addr().expect("upstream address");
        let (warm_batches_sender, warm_batches_received) = watch::channel(0);
        let (parked_calls_sender, parked_calls) = watch::channel(0);
        let stub = StubCache { warm_batches_received: warm_batches_sender, parked_calls: parked_calls_sender };
        let settings = ServerSettings { shutdown_grace: Duration::from_secs(2), ..ServerSettings::default() };
        let server =
            MeshServer::new(settings).add_service(CacheServer::new(stub), mesh_proto::cache::v1::FILE_DESCRIPTOR_SET);
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(server.serve(listener, shutdown.clone()));
        Self { address, shutdown, serving, warm_batches_received, parked_calls }
    }

    fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            cache_upstream: Some(format!("http://{}", self.address)),
            health_poll_interval: Duration::from_millis(20),
            shutdown_grace: Duration::from_secs(5),
            ..GatewayConfig::default()
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.serving.await.expect("upstream task").expect("upstream stops cleanly");
    }
}

fn with_correlation_id<T>(message: T, correlation_id: &'static str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-correlation-id", correlation_id.parse().expect("ascii id"));
    request
}

fn correlation_id_of<T>(response: &Response<T>) -> String {
    let value = response.metadata().get("x-correlation-id").expect("the gateway always returns an id");
    value.to_str().expect("ascii id").to_owned()
}

fn warm_batch(keys: &[&str]) -> WarmRequest {
    let entries = keys.iter().map(|key| CacheEntry { key: (*key).to_owned(), ..CacheEntry::default() }).collect();
    WarmRequest { entries, overwrite: false }
}

/// Starts `count` calls that the upstream parks until they are cancelled.
fn start_parked_calls(
    cache: &CacheClient<Channel>,
    count: usize,
) -> JoinSet<Result<Response<GetOrLeaseResponse>, Status>> {
    let mut calls = JoinSet::new();
    for _ in 0..count {
        let mut client = cache.clone();
        calls.spawn(
            async move { client.get_or_lease(GetOrLeaseRequest { key: "hot".into(), ..Default::default() }).await },
        );
    }
    calls
}

// === tests ===

#[tokio::test]
async fn a_unary_call_passes_through_with_the_callers_correlation_id() {
    let upstream = TestUpstream::start().await;
    let gateway = TestGateway::start(upstream.gateway_config()).await;
    let mut cache = CacheClient::new(gateway.connect_lazy());

    let response = cache
        .get(with_correlation_id(GetRequest { key: "greeting".into() }, "corr-passthrough-1"))
        .await
        .expect("get passes through");

    assert_eq!(correlation_id_of(&response), "corr-passthrough-1");
    let reply = response.into_inner();
    assert!(reply.found);
    assert_eq!(reply.tags, ["greeting"]);
    assert_eq!(reply.value, b"corr-passthrough-1", "the upstream saw the caller's id");
    gateway.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_call_without_an_id_gets_a_minted_one_that_the_upstream_sees_too() {
    let upstream = TestUpstream::start().await;
    let gateway = TestGateway::start(upstream.gateway_config()).await;
    let mut cache = CacheClient::new(gateway.connect_lazy());

    let response = cache.get(GetRequest { key: "k".into() }).await.expect("get passes through");

    let minted = correlation_id_of(&response);
    assert_eq!((minted.len(), minted.as_bytes()[14]), (36, b'7'), "a UUID v7, got {minted}");
    assert_eq!(response.into_inner().value, minted.as_bytes(), "the upstream saw the minted id");
    gateway.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn an_upstream_error_keeps_its_code_message_and_details() {
    let upstream = TestUpstream::start().await;
    let gateway = TestGateway::start(upstream.gateway_config()).await;
    let mut cache = CacheClient::new(gateway.connect_lazy());

    let status = cache
        .delete(with_correlation_id(DeleteRequest { key: "missing".into() }, "corr-error-1"))
        .await
        .expect_err("the upstream refuses the delete");

    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "key `missing` not found");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo survives the gateway");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("KEY_NOT_FOUND", "mesh.cache.v1"));
    assert_eq!(info.metadata["correlation_id"], "corr-error-1", "the upstream got the caller's id");
    gateway.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn an_unknown_service_is_unimplemented_and_named() {
    let upstream = TestUpstream::start().await;
    let gateway = TestGateway::start(upstream.gateway_config()).await;
    let mut grpc = tonic::client::Grpc::new(gateway.connect_lazy());
    grpc.ready().await.expect("channel ready");

    let status = grpc
        .unary(
            with_correlation_id(GetRequest { key: "k".into() }, "corr-unknown-1"),
            PathAndQuery::from_static("/mesh.nope.v1.Nope/Get"),
            tonic_prost::ProstCodec::<GetRequest, GetResponse>::default(),
        )
        .await
        .expect_err("nobody serves mesh.nope.v1.Nope");

    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("`mesh.nope.v1.Nope`"), "{}", status.message());
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo from the gateway");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("UNKNOWN_SERVICE", "mesh.gateway"));
    assert_eq!(info.metadata["correlation_id"], "corr-unknown-1");
    gateway.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_gateway_without_upstreams_refuses_cache_and_is_serving() {
    let gateway = TestGateway::start(GatewayConfig::default()).await;
    let mut cache = CacheClient::new(gateway.connect_lazy());
    let mut health = HealthClient::new(gateway.connect_lazy());

    let status = cache.get(GetRequest { key: "k".into() }).await.expect_err("cache is not configured");

    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("`mesh.cache.v1.Cache`"), "{}", status.message());
    assert_eq!(check_health(&mut health, "").await.expect("health is local"), ServingStatus::Serving);
    gateway.stop().await;
}

#[tokio::test]
async fn health_follows_the_upstream_and_its_loss_makes_calls_unavailable() {
    let upstream = TestUpstream::start().await;
    let gateway = TestGateway::start(upstream.gateway_config()).await;
    let mut health = HealthClient::new(gateway.connect_lazy());
    let mut cache = CacheClient::new(gateway.connect_lazy());

    assert_eq!(check_health(&mut health, "").await.expect("check the mesh"), ServingStatus::Serving);
    assert_eq!(check_health(&mut health, "mesh.cache.v1.Cache").await.expect("check cache"), ServingStatus::Serving);
    let unknown = check_health(&mut health, "mesh.nope.v1.Nope").await.expect_err("not a mesh service");
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(unknown.get_error_details().error_info().expect("ErrorInfo").reason, "UNKNOWN_SERVICE");
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
    let first = watch.message().await.expect("watch message").expect("watch open");
    assert_eq!(first.status(), ServingStatus::Serving);

    upstream.stop().await;

    assert_eq!(check_health(&mut health, "").await.expect("check the mesh"), ServingStatus::NotServing);
    assert_eq!(check_health(&mut health, "mesh.cache.v1.Cache").await.expect("check cache"), ServingStatus::NotServing);
    let change = watch.message().await.expect("watch message").expect("watch open");
    assert_eq!(change.status(), ServingStatus::NotServing);
    let status = cache.get(GetRequest { key: "k".into() }).await.expect_err("the upstream is gone");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.get_error_details().error_info().expect("ErrorInfo").reason, "UPSTREAM_UNAVAILABLE");

    gateway.stop().await;
    assert!(watch.message().await.expect("watch ends cleanly").is_none(), "the drain ends watch streams");
}

#[tokio::test]
async fn reflection_lists_every_configured_service_and_health() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let upstream = TestUpstream::start().await;
    let gateway = TestGateway::start(upstream.gateway_config()).await;
    let mut reflection = ServerReflectionClient::new(gateway.connect_lazy());

    let list_services = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(list_services))
        .await
        .expect("reflection v1alpha is served")
        .into_inner();
    let response = responses.message().await.expect("reflection answer").expect("one answer");

    let Some(MessageResponse::ListServicesResponse(listed)) = response.message_response else {
        panic!("expected a service list, got {:?}", response.message_response);
    };
    let names: Vec<String> = listed.service.into_iter().map(|service| service.name).collect();
    for expected in ["mesh.cache.v1.Cache", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
    }
    gateway.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_client_stream_passes_through_batch_by_batch() {
    let mut upstream = TestUpstream::start().await;
    let gateway = TestGateway::start(upstream.gateway_config()).await;
    let mut cache = CacheClient::new(gateway.connect_lazy());
    let (batch_sender, batches) = mpsc::channel(1);

    let warming = tokio::spawn(async move { cache.warm(ReceiverStream::new(batches)).await });
    batch_sender.send(warm_batch(&["a", "b"])).await.expect("warm call open");
    // The first batch reaches the upstream while the request stream is still open: nothing is buffered.
    upstream.warm_batches_received.wait_for(|received| *received == 1).await.expect("upstream running");
    batch_sender.send(warm_batch(&["c"])).await.expect("warm call open");
    drop(batch_sender);
    let warmed = warming.await.expect("warm task").expect("warm passes through").into_inner();

    assert_eq!(warmed.loaded_count, 3);
    assert_eq!(*upstream.warm_batches_received.borrow(), 2);
    gateway.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn cancelling_many_calls_leaves_other_calls_on_the_upstream_connection_alone() {
    const CANCELLED_CALLS: usize = 500;
    let mut upstream = TestUpstream::start().await;
    // One upstream connection, so the cancelled calls and the survivor share it.
    let gateway = TestGateway::start(GatewayConfig { upstream_connections: 1, ..upstream.gateway_config() }).await;
    let channel = gateway.connect_lazy();
    let mut cache = CacheClient::new(channel.clone());

    let (batch_sender, batches) = mpsc::channel(1);
    let mut survivor_client = cache.clone();
    let survivor = tokio::spawn(async move { survivor_client.warm(ReceiverStream::new(batches)).await });
    batch_sender.send(warm_batch(&["a"])).await.expect("warm call open");
    upstream.warm_batches_received.wait_for(|received| *received == 1).await.expect("upstream running");

    // All parked, then cancelled: every cancellation reaches the upstream as a stream reset.
    let mut parked_then_cancelled = start_parked_calls(&cache, CANCELLED_CALLS);
    upstream.parked_calls.wait_for(|parked| *parked == CANCELLED_CALLS).await.expect("upstream running");
    parked_then_cancelled.shutdown().await;
    upstream.parked_calls.wait_for(|parked| *parked == 0).await.expect("upstream running");
    // Cancelled as soon as one is parked, while most are still on their way: some resets may reach streams the
    // upstream has not accepted yet, the kind that can get a shared connection closed (`too_many_resets`).
    let mut cancelled_on_arrival = start_parked_calls(&cache, CANCELLED_CALLS);
    upstream.parked_calls.wait_for(|parked| *parked > 0).await.expect("upstream running");
    cancelled_on_arrival.shutdown().await;

    batch_sender.send(warm_batch(&["b"])).await.expect("warm call still open");
    drop(batch_sender);
    let warmed = survivor.await.expect("warm task").expect("the call in flight survived").into_inner();
    assert_eq!(warmed.loaded_count, 2);
    let after = cache.get(GetRequest { key: "after".into() }).await.expect("new calls still pass");
    assert_eq!(after.into_inner().tags, ["after"]);
    gateway.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn the_drain_lets_a_call_in_flight_finish() {
    let mut upstream = TestUpstream::start().await;
    let gateway = TestGateway::start(upstream.gateway_config()).await;
    let mut cache = CacheClient::new(gateway.connect_lazy());
    let (batch_sender, batches) = mpsc::channel(1);
    let warming = tokio::spawn(async move { cache.warm(ReceiverStream::new(batches)).await });
    batch_sender.send(warm_batch(&["a"])).await.expect("warm call open");
    upstream.warm_batches_received.wait_for(|received| *received == 1).await.expect("upstream running");

    gateway.begin_shutdown();
    batch_sender.send(warm_batch(&["b"])).await.expect("warm call still open while draining");
    drop(batch_sender);

    let warmed = warming.await.expect("warm task").expect("the call in flight finishes").into_inner();
    assert_eq!(warmed.loaded_count, 2);
    gateway.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn the_drain_cuts_calls_that_outlive_the_grace_period() {
    let mut upstream = TestUpstream::start().await;
    let config = GatewayConfig { shutdown_grace: Duration::from_millis(50), ..upstream.gateway_config() };
    let gateway = TestGateway::start(config).await;
    let cache = CacheClient::new(gateway.connect_lazy());
    let mut never_ending = start_parked_calls(&cache, 1);
    upstream.parked_calls.wait_for(|parked| *parked == 1).await.expect("upstream running");

    gateway.stop().await;

    let outcome = never_ending.join_next().await.expect("one call").expect("call task");
    assert!(outcome.is_err(), "the parked call was cut, got {outcome:?}");
    upstream.parked_calls.wait_for(|parked| *parked == 0).await.expect("the cut reached the upstream");
    upstream.stop().await;
}
