//! `BulkOps` end to end against the Virtualmin simulator with 5 ms of latency
//! on every call: a 1000-domain suspend at `max_concurrency` 16 (target ≥ 500
//! domains/s) and a 100-domain suspend (target < 1 s). Each sample is timed
//! from `StartBulkOperation` to the last `WatchJob` message; between samples the
//! domains are activated again, untimed, so every sample suspends active
//! domains. Run with `cargo bench -p mesh-bulkops --bench suspend`.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mesh_kit::{CancellationToken, ConfigSource, Runtime, ServerSettings};
use mesh_proto::bulkops::v1 as pb;
use mesh_proto::bulkops::v1::bulk_ops_client::BulkOpsClient;
use mesh_proto::virtualmin::v1 as vpb;
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;
use mesh_virtualmin_sim::{Fault, FaultRule, Simulator, SimulatorConfig};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Simulated latency of every remote.cgi call.
const LATENCY: Duration = Duration::from_millis(5);
/// Concurrency of the 1000-domain job.
const CONCURRENCY: u32 = 16;

struct World {
    client: BulkOpsClient<Channel>,
    active: Vec<String>,
    _data_dir: tempfile::TempDir,
    _shutdown: CancellationToken,
}

/// A service's `run`, boxed.
type RunService = fn(Runtime) -> std::pin::Pin<Box<dyn Future<Output = Result<(), mesh_kit::ServeError>> + Send>>;

async fn serve(run: RunService, config_source: ConfigSource, shutdown: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let runtime =
        Runtime { listener, server_settings: ServerSettings::default(), config_source, shutdown: shutdown.clone() };
    tokio::spawn(run(runtime));
    url
}

async fn world() -> World {
    let shutdown = CancellationToken::new();
    let simulator = Simulator::new(SimulatorConfig { domain_count: 1300, ..SimulatorConfig::default() });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_port = listener.local_addr().unwrap().port();
    tokio::spawn(simulator.clone().serve(listener, shutdown.clone()));
    let virtualmin_source = ConfigSource::default()
        .with_var(
            "VIRTUALMIN_SERVERS",
            format!("[{{id=sim,hostname=127.0.0.1,port={sim_port},scheme=http,username=root,password_env=SIM_PW}}]"),
        )
        .with_var("SIM_PW", "simulator")
        .with_var("VIRTUALMIN_RATE_LIMIT_MAX_CALLS", "1000000")
        .with_var("VIRTUALMIN_CONNECTION_POOL_SIZE", "25");
    let virtualmin_url = serve(|rt| Box::pin(mesh_virtualmin::run(rt)), virtualmin_source, &shutdown).await;
    let data_dir = tempfile::tempdir().unwrap();
    let bulkops_source = ConfigSource::default()
        .with_var("MESH_BULKOPS_VIRTUALMIN_ENDPOINT", virtualmin_url.clone())
        .with_var("MESH_BULKOPS_DATA_DIR", data_dir.path().to_string_lossy().into_owned())
        .with_var("MESH_BULKOPS_POLL_INTERVAL", "0.05");
    let bulkops_url = serve(|rt| Box::pin(mesh_bulkops::run(rt)), bulkops_source, &shutdown).await;

    let mut virtualmin = VirtualminGatewayClient::connect(virtualmin_url).await.unwrap();
    let listing = vpb::ListDomainsRequest {
        server_id: "sim".into(),
        page_size: 1000,
        state: vpb::DomainStateFilter::Active.into(),
        ..Default::default()
    };
    let mut active: Vec<String> =
        virtualmin.list_domains(listing).await.unwrap().into_inner().domains.into_iter().map(|d| d.name).collect();
    active.truncate(1000);
    assert_eq!(active.len(), 1000, "the data set has 1000 active domains");
    // Every call from here on waits 5 ms in the simulator.
    simulator.inject(FaultRule::always(Fault::Latency(LATENCY)));
    let client = BulkOpsClient::connect(bulkops_url).await.unwrap();
    World { client, active, _data_dir: data_dir, _shutdown: shutdown }
}

async fn run_job(client: &mut BulkOpsClient<Channel>, kind: pb::OperationKind, domains: &[String]) -> Duration {
    let began = Instant::now();
    let request = pb::StartBulkOperationRequest {
        kind: kind.into(),
        target_set: Some(pb::start_bulk_operation_request::TargetSet::TargetList(pb::TargetList {
            targets: domains.iter().map(|d| pb::Target { server_id: "sim".into(), domain_name: d.clone() }).collect(),
        })),
        mode: pb::BulkMode::BestEffort.into(),
        max_concurrency: CONCURRENCY,
        ..Default::default()
    };
    let job_id = client.start_bulk_operation(request).await.unwrap().into_inner().job_id;
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id }).await.unwrap().into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await.unwrap() {
        last = message.job;
    }
    let elapsed = began.elapsed();
    let job = last.unwrap();
    assert_eq!(job.state(), pb::JobState::Succeeded);
    assert_eq!(job.result.unwrap().successful_count as usize, domains.len());
    elapsed
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let world = runtime.block_on(world());
    let mut group = c.benchmark_group("bulk_suspend_5ms_latency");
    for size in [1000_usize, 100] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("{size}_domains_concurrency_16"), |b| {
            b.iter_custom(|iterations| {
                let mut client = world.client.clone();
                let domains = world.active[..size].to_vec();
                runtime.block_on(async move {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iterations {
                        timed += run_job(&mut client, pb::OperationKind::Suspend, &domains).await;
                        run_job(&mut client, pb::OperationKind::Activate, &domains).await;
                    }
                    timed
                })
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Set here rather than on the group, so `--measurement-time` and `--warm-up-time` on the command line
    // (`bench/run --quick`) still apply: criterion lets a group's settings override the command line.
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(30)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
