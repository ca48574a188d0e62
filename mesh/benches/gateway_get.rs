//! Unary `Cache/Get` latency and throughput, direct to the Cache service vs
//! through the gateway, both served in this process on loopback. The ratio
//! of the two is the gateway's cost; figures go into docs/benchmarks.md.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mesh_kit::{CancellationToken, ConfigSource, Runtime, ServerSettings};
use mesh_proto::cache::v1 as pb;
use mesh_proto::cache::v1::cache_client::CacheClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Calls in flight at once for the throughput measurement.
const CONCURRENCY: usize = 32;

struct BenchMesh {
    cache_url: String,
    gateway_url: String,
    shutdown: CancellationToken,
}

async fn start_mesh() -> BenchMesh {
    let shutdown = CancellationToken::new();
    let cache_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cache_url = format!("http://{}", cache_listener.local_addr().unwrap());
    let gateway_url = format!("http://{}", gateway_listener.local_addr().unwrap());
    let runtime = Runtime {
        listener: cache_listener,
        server_settings: ServerSettings::default(),
        config_source: ConfigSource::default(),
        shutdown: shutdown.clone(),
    };
    tokio::spawn(mesh_cache::run(runtime));
    let source = ConfigSource::default().with_var("MESH_GATEWAY_CACHE_UPSTREAM", cache_url.clone());
    let gateway_config: mesh_gateway::GatewayConfig = mesh_kit::config::load(&source).unwrap();
    tokio::spawn(mesh_gateway::serve(gateway_listener, gateway_config, shutdown.clone()));
    BenchMesh { cache_url, gateway_url, shutdown }
}

async fn client(url: &str) -> CacheClient<Channel> {
    let channel = Channel::from_shared(url.to_owned()).unwrap().tcp_nodelay(true).connect().await.unwrap();
    let mut client = CacheClient::new(channel);
    let set = pb::SetRequest { key: "bench".into(), value: vec![7; 32], ..Default::default() };
    client.set(set).await.unwrap();
    client
}

async fn concurrent_gets(client: &CacheClient<Channel>, total: u64) {
    let per_task = total.div_ceil(CONCURRENCY as u64);
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    client.get(pb::GetRequest { key: "bench".into() }).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

fn unary_get(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mesh = runtime.block_on(start_mesh());
    let direct = runtime.block_on(client(&mesh.cache_url));
    let gateway = runtime.block_on(client(&mesh.gateway_url));

    let mut latency = c.benchmark_group("unary_get_latency");
    latency.throughput(Throughput::Elements(1));
    for (name, client) in [("direct", &direct), ("gateway", &gateway)] {
        latency.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let mut client = client.clone();
                async move { client.get(pb::GetRequest { key: "bench".into() }).await.unwrap() }
            });
        });
    }
    latency.finish();

    let mut throughput = c.benchmark_group("unary_get_throughput_c32");
    throughput.throughput(Throughput::Elements(1));
    for (name, client) in [("direct", &direct), ("gateway", &gateway)] {
        throughput.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                runtime.block_on(concurrent_gets(client, iterations));
                started.elapsed()
            });
        });
    }
    throughput.finish();
    mesh.shutdown.cancel();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = unary_get
}
criterion_main!(benches);
