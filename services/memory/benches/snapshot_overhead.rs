//! Throughput of a busy service while the profiler snapshots it every
//! second, against the same service unwatched, in one run: batches of 64
//! concurrent unary calls (`grpc.health.v1.Health/Check`, through the whole
//! `MeshServer` stack) over one HTTP/2 connection. The unwatched case runs
//! before and after the watched one, so drift in the machine shows.
//!
//! `cargo bench -p mesh-memory --bench snapshot_overhead`; `bench/run memory`
//! runs it with its own `CRITERION_HOME` and reads criterion's estimates.
//! Each case measures 15 s unless `--measurement-time` says otherwise. The
//! watched case starts once the profiler holds its first snapshot of the busy
//! service; after it the bench prints how many snapshots the profiler took
//! (`snapshots while watched: N`, about one a second of warm-up and
//! measurement, at most the 100 it retains by default).

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use mesh_kit::{CancellationToken, ConfigSource, MeshServer, Runtime, ServerSettings};
use mesh_proto::memory::v1 as pb;
use mesh_proto::memory::v1::memory_profiler_client::MemoryProfilerClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CALLS_PER_BATCH: u64 = 64;
/// The busy service's name in `MESH_MEMORY_TARGETS`.
const BUSY_SERVICE: &str = "busy";

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

/// A MemoryProfiler snapshotting the busy service every second; returns its URI.
async fn start_profiler(target_uri: &str, shutdown: CancellationToken) -> String {
    let (listener, uri) = bind().await;
    let config_source = ConfigSource::default()
        .with_var("MESH_MEMORY_TARGETS", format!("{BUSY_SERVICE}={target_uri}"))
        .with_var("MESH_MEMORY_SNAPSHOT_INTERVAL", "1");
    let runtime = Runtime { listener, server_settings: ServerSettings::default(), config_source, shutdown };
    tokio::spawn(async move { mesh_memory::run(runtime).await.expect("profiler serves") });
    uri
}

/// How many snapshots in which the busy service answered the profiler holds.
async fn reachable_snapshots(profiler: &mut MemoryProfilerClient<Channel>) -> usize {
    let mut page_token = String::new();
    let mut reachable = 0;
    loop {
        let request = pb::ListSnapshotsRequest { service: BUSY_SERVICE.into(), page_size: 1000, page_token };
        let page = profiler.list_snapshots(request).await.expect("list snapshots").into_inner();
        reachable +=
            page.snapshots.iter().filter(|snapshot| snapshot.reachability() == pb::Reachability::Reachable).count();
        if page.next_page_token.is_empty() {
            return reachable;
        }
        page_token = page.next_page_token;
    }
}

/// Connects to the profiler once it holds its first snapshot of the busy
/// service (taken at start), so the watched case is watched from its start,
/// also when `cargo test` runs each case only once.
async fn profiler_with_first_snapshot(profiler_uri: String) -> MemoryProfilerClient<Channel> {
    let mut profiler = MemoryProfilerClient::connect(profiler_uri).await.expect("connect to the profiler");
    for _ in 0..200 {
        if reachable_snapshots(&mut profiler).await > 0 {
            return profiler;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the profiler took no snapshot of the busy service within 10 s of starting");
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
    group.bench_function("unwatched", |b| b.to_async(&runtime).iter(|| call_batch(client.clone())));

    let profiler_shutdown = CancellationToken::new();
    let mut profiler = runtime.block_on(async {
        let profiler_uri = start_profiler(&uri, profiler_shutdown.clone()).await;
        profiler_with_first_snapshot(profiler_uri).await
    });
    group.bench_function("snapshots_every_1s", |b| b.to_async(&runtime).iter(|| call_batch(client.clone())));
    // The count bench/run reports next to the figures: proof the watched case was watched.
    let snapshots = runtime.block_on(reachable_snapshots(&mut profiler));
    println!("snapshots while watched: {snapshots}");
    profiler_shutdown.cancel();

    group.bench_function("unwatched_again", |b| b.to_async(&runtime).iter(|| call_batch(client.clone())));
    group.finish();
    service_shutdown.cancel();
}

criterion_group! {
    name = benches;
    // Set here, not on the group, so `--measurement-time` on the command line
    // (bench/run --quick) still shortens it.
    config = Criterion::default().measurement_time(Duration::from_secs(15));
    targets = busy_service_throughput
}
criterion_main!(benches);
