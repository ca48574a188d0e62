//! BulkOps end to end: a job through `mesh up`'s gateway (generated client
//! and the `mesh bulk` verb), and a real `mesh serve bulkops` process killed
//! with SIGKILL halfway through a job, restarted, and finishing the job with
//! every domain acted on exactly once (the simulator's call log says so).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use mesh_kit::{CancellationToken, ConfigSource, Runtime, ServerSettings};
use mesh_proto::bulkops::v1 as pb;
use mesh_proto::bulkops::v1::bulk_ops_client::BulkOpsClient;
use mesh_proto::virtualmin::v1 as virtualmin;
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;
use mesh_virtualmin_sim::{Fault, FaultRule, Simulator, SimulatorConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::harness::TestMesh;

fn suspend_request(server_id: &str, domains: &[String], mode: pb::BulkMode) -> pb::StartBulkOperationRequest {
    pb::StartBulkOperationRequest {
        kind: pb::OperationKind::Suspend.into(),
        target_set: Some(pb::start_bulk_operation_request::TargetSet::TargetList(pb::TargetList {
            targets: domains
                .iter()
                .map(|d| pb::Target { server_id: server_id.to_owned(), domain_name: d.clone() })
                .collect(),
        })),
        mode: mode.into(),
        ..Default::default()
    }
}

/// Follows a job to its end.
async fn final_job(client: &mut BulkOpsClient<Channel>, job_id: &str) -> pb::Job {
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: job_id.to_owned() }).await.unwrap().into_inner();
    let mut last = None;
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(message) = stream.message().await.expect("progress") {
            last = message.job;
        }
    })
    .await
    .expect("the job finished in time");
    last.expect("at least one message")
}

async fn active_domains(client: &mut VirtualminGatewayClient<Channel>, server_id: &str) -> Vec<String> {
    let request = virtualmin::ListDomainsRequest {
        server_id: server_id.to_owned(),
        page_size: 1000,
        state: virtualmin::DomainStateFilter::Active.into(),
        ..Default::default()
    };
    client.list_domains(request).await.unwrap().into_inner().domains.into_iter().map(|d| d.name).collect()
}

#[tokio::test]
async fn a_bulk_suspend_runs_through_the_gateway_and_the_cli() {
    let mesh = TestMesh::start().await;
    let mut virtualmin = VirtualminGatewayClient::new(mesh.channel().await);
    let domains = active_domains(&mut virtualmin, "simulator").await;
    assert!(domains.len() >= 6, "the simulator has active domains");
    let mut bulkops = BulkOpsClient::new(mesh.channel().await);

    let started = bulkops
        .start_bulk_operation(suspend_request("simulator", &domains[..3], pb::BulkMode::Atomic))
        .await
        .expect("BulkOps answers through the gateway")
        .into_inner();
    let job = final_job(&mut bulkops, &started.job_id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded);
    assert_eq!(job.result.unwrap().successful_count, 3);
    for domain in &domains[..3] {
        let request = virtualmin::GetDomainRequest { server_id: "simulator".into(), domain_name: domain.clone() };
        let found = virtualmin.get_domain(request).await.unwrap().into_inner().domain.unwrap();
        assert!(found.suspended, "{domain} is suspended");
    }

    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["bulk", "suspend", "--server", "simulator", "--json", "--endpoint"])
        .arg(format!("http://{}", mesh.gateway_addr))
        .args(["--domain", &domains[3], "--domain", &domains[4]])
        .output()
        .await
        .expect("mesh bulk runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(summary["state"], "SUCCEEDED");
    assert_eq!(summary["successful_count"], 2);
    assert_eq!(summary["targets"].as_array().unwrap().len(), 2);

    let refused = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["bulk", "health", "--server", "nowhere", "--domain", "a.example", "--endpoint"])
        .arg(format!("http://{}", mesh.gateway_addr))
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("UNKNOWN_SERVER"));
    mesh.stop().await;
}

/// `mesh serve bulkops` as a child process; returns it and its URL.
async fn serve_bulkops(data_dir: &std::path::Path, virtualmin_url: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["serve", "bulkops", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("MESH_BULKOPS_DATA_DIR", data_dir)
        .env("MESH_BULKOPS_VIRTUALMIN_ENDPOINT", virtualmin_url)
        .env("MESH_BULKOPS_LEASE_DURATION", "1")
        .env("MESH_BULKOPS_POLL_INTERVAL", "0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("mesh serve bulkops starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("it prints its address")
        .unwrap()
        .expect("a line");
    let url = line.split_whitespace().nth(1).expect("`bulkops  http://...`").to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test]
async fn a_job_survives_kill_minus_9_and_acts_on_each_domain_once() {
    let shutdown = CancellationToken::new();
    let simulator = Simulator::new(SimulatorConfig { domain_count: 400, ..SimulatorConfig::default() });
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_port = sim_listener.local_addr().unwrap().port();
    tokio::spawn(simulator.clone().serve(sim_listener, shutdown.clone()));
    let source = ConfigSource::default()
        .with_var(
            "VIRTUALMIN_SERVERS",
            format!("[{{id=sim,hostname=127.0.0.1,port={sim_port},scheme=http,username=root,password_env=SIM_PW}}]"),
        )
        .with_var("SIM_PW", "simulator")
        .with_var("VIRTUALMIN_RATE_LIMIT_MAX_CALLS", "1000000");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let virtualmin_url = format!("http://{}", listener.local_addr().unwrap());
    let runtime = Runtime {
        listener,
        server_settings: ServerSettings::default(),
        config_source: source,
        shutdown: shutdown.clone(),
    };
    tokio::spawn(mesh_virtualmin::run(runtime));
    let mut virtualmin = VirtualminGatewayClient::connect(virtualmin_url.clone()).await.unwrap();
    let domains = active_domains(&mut virtualmin, "sim").await;
    simulator.inject(FaultRule::always(Fault::Latency(Duration::from_millis(10))).for_program("disable-domain"));

    let data_dir = tempfile::tempdir().unwrap();
    let (mut first, url) = serve_bulkops(data_dir.path(), &virtualmin_url).await;
    let mut client = BulkOpsClient::connect(url).await.unwrap();
    let mut request = suspend_request("sim", &domains, pb::BulkMode::BestEffort);
    request.max_concurrency = 4;
    let job_id = client.start_bulk_operation(request).await.unwrap().into_inner().job_id;
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner();
    let half = domains.len() / 2;
    let mut done = 0;
    while done < half {
        done += stream.message().await.unwrap().expect("progress").results.len();
    }
    first.start_kill().expect("SIGKILL");
    first.wait().await.unwrap();
    drop(stream);

    let (_second, url) = serve_bulkops(data_dir.path(), &virtualmin_url).await;
    let mut client = BulkOpsClient::connect(url).await.unwrap();
    let job = final_job(&mut client, &job_id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded);
    let result = job.result.unwrap();
    assert_eq!(result.successful_count as usize, domains.len());
    let mut calls: HashMap<String, usize> = HashMap::new();
    for call in simulator.call_log().into_iter().filter(|c| c.program == "disable-domain") {
        let position = call.argv.iter().position(|a| a == "--domain").unwrap();
        *calls.entry(call.argv[position + 1].clone()).or_default() += 1;
    }
    assert_eq!(calls.len(), domains.len(), "no domain forgotten");
    assert!(calls.values().all(|n| *n == 1), "no domain acted on twice: {calls:?}");
    shutdown.cancel();
}
