//! Throughput of a busy service while the profiler snapshots it every
//! second, against the same service unwatched, in one run: batches of 64
//! concurrent unary calls (`grpc.health.v1.Health/Check`, through the whole
//! `MeshServer` stack) over one HTTP/2 connection. The unwatched case runs
//! before and after the watched one, so drift in the machine shows.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use mesh_kit::{CancellationToken, ConfigSource, MeshServer, Runtime, ServerSettings};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CALLS_PER_BATCH: u64 = 64;

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let uri = format!("http://{}", listener.local_addr().expect("local addr"));
    (listener, uri)
}

/// The busy service: a `MeshServer` with a registered gauge, as a real service has.
async fn start_busy_service(shutdown: CancellationToken) -> String {
    let (listener, uri) = bind().await;
    let server = MeshServer::new(ServerSettings::default()).with_memory_gauge("cache_bytes", Arc::new(|| 1 << 20));
    tokio::spawn(async move { server.serve(listener, shutdown).await.expect("busy service serves") });
    uri
}

async fn start_profiler(target_uri: &str, shutdown: CancellationToken) {
    let (listener, _uri) = bind().await;
    let config_source = ConfigSource::default()
        .with_var("MESH_MEMORY_TARGETS", format!("busy={target_uri}"))
        .with_var("MESH_MEMORY_SNAPSHOT_INTERVAL", "1");
    let runtime = Runtime { listener, server_settings: ServerSettings::default(), config_source, shutdown };
    tokio::spawn(async move { mesh_memory::run(runtime).await.expect("profiler serves") });
}

async fn call_batch(client: HealthClient<Channel>) {
    let calls = (0..CALLS_PER_BATCH).map(|_| {
        let mut client = client.clone();
        async move { client.check(HealthCheckRequest { service: String::new() }).await.expect("health check") }
    });
    join_all(calls).await;
}

fn busy_service_throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let service_shutdown = CancellationToken::new();
    let uri = runtime.block_on(start_busy_service(service_shutdown.clone()));
    let client = runtime
        .block_on(async { HealthClient::new(Channel::from_shared(uri.clone()).unwrap().connect().await.unwrap()) });

    let mut group = c.benchmark_group("busy_service_64_concurrent_calls");
    group.throughput(Throughput::Elements(CALLS_PER_BATCH));
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("unwatched", |b| b.to_async(&runtime).iter(|| call_batch(client.clone())));

    let profiler_shutdown = CancellationToken::new();
    runtime.block_on(start_profiler(&uri, profiler_shutdown.clone()));
    group.bench_function("snapshots_every_1s", |b| b.to_async(&runtime).iter(|| call_batch(client.clone())));
    profiler_shutdown.cancel();

    group.bench_function("unwatched_again", |b| b.to_async(&runtime).iter(|| call_batch(client.clone())));
    group.finish();
    service_shutdown.cancel();
}

criterion_group!(benches, busy_service_throughput);
criterion_main!(benches);
