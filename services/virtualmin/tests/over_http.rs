//! The `VirtualminGateway` service against the simulator, over real HTTP and
//! real gRPC: a simulator on 127.0.0.1:0, the service on 127.0.0.1:0, a
//! generated client. Settings are sent through a `watch` channel, as the
//! kit's reloader does, so a test can reload them mid-flight.

mod support;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use mesh_kit::CancellationToken;
use mesh_proto::virtualmin::v1 as pb;
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;
use mesh_virtualmin::config::{ConfigSecret, Scheme, TimeoutClass};
use mesh_virtualmin::{Program, RemoteParams, VirtualminClient, VirtualminConfig};
use mesh_virtualmin_sim::{Fault, FaultRule, Simulator, SimulatorConfig};
use prost::Message as _;
use secrecy::SecretString;
use support::{SIM_PASSWORD, serve_gateway, serve_simulator, simulator_config};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

struct Harness {
    simulator: Simulator,
    client: VirtualminGatewayClient<Channel>,
    settings: watch::Sender<Arc<VirtualminConfig>>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    async fn start(tweak: impl FnOnce(&mut VirtualminConfig)) -> Self {
        Self::start_serving(None, tweak).await
    }

    /// A harness whose simulator speaks HTTPS with `tls`; the server entry
    /// names it `localhost` over https, and `tweak` adds the trust settings.
    async fn start_tls(tls: Arc<rustls::ServerConfig>, tweak: impl FnOnce(&mut VirtualminConfig)) -> Self {
        Self::start_serving(Some(tls), |config| {
            "localhost".clone_into(&mut config.servers[0].hostname);
            config.servers[0].scheme = Scheme::Https;
            tweak(config);
        })
        .await
    }

    async fn start_serving(tls: Option<Arc<rustls::ServerConfig>>, tweak: impl FnOnce(&mut VirtualminConfig)) -> Self {
        let shutdown = CancellationToken::new();
        let simulator = Simulator::new(SimulatorConfig {
            password: SIM_PASSWORD.to_owned(),
            domain_count: 40,
            ..SimulatorConfig::default()
        });
        let sim_port = serve_simulator(&simulator, tls, &shutdown).await;
        let mut config = simulator_config(sim_port);
        tweak(&mut config);
        let (settings, receiver) = watch::channel(Arc::new(config));
        let client = serve_gateway(receiver, Some(64 << 20), &shutdown).await;
        Self { simulator, client, settings, shutdown }
    }

    fn reload(&self, tweak: impl FnOnce(&mut VirtualminConfig)) {
        let mut config = (**self.settings.borrow()).clone();
        tweak(&mut config);
        self.settings.send_replace(Arc::new(config));
    }
}

fn calls_of(simulator: &Simulator, program: &str) -> Vec<Vec<String>> {
    simulator.call_log().into_iter().filter(|call| call.program == program).map(|call| call.argv).collect()
}

fn reason(status: &tonic::Status) -> String {
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

async fn get_domain(client: &mut VirtualminGatewayClient<Channel>, name: &str) -> Result<pb::Domain, tonic::Status> {
    let request = pb::GetDomainRequest { server_id: "sim".into(), domain_name: name.into() };
    Ok(client.get_domain(request).await?.into_inner().domain.unwrap())
}

fn exact(amount: Option<&pb::ByteAmount>) -> Option<u64> {
    match amount?.amount? {
        pb::byte_amount::Amount::ExactBytes(bytes) => Some(bytes),
        _ => None,
    }
}

#[tokio::test]
async fn listing_pages_through_every_domain_without_passwords() {
    let mut harness = Harness::start(|_| {}).await;
    let mut names = Vec::new();
    let mut page_token = String::new();
    let mut encoded = Vec::new();
    loop {
        let request = pb::ListDomainsRequest {
            server_id: "sim".into(),
            page_size: 7,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = harness.client.list_domains(request).await.unwrap().into_inner();
        assert_eq!(page.total_size, 40);
        page.encode(&mut encoded).unwrap();
        names.extend(page.domains.into_iter().map(|d| d.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names, harness.simulator.domain_names());
    // Later pages come from the snapshot: Virtualmin was asked once.
    assert_eq!(calls_of(&harness.simulator, "list-domains").len(), 1);
    assert_eq!(calls_of(&harness.simulator, "list-domains")[0], ["--multiline"]);
    // The simulator prints plaintext `Password: sample-NNNNNN` lines, as Virtualmin does for a master admin.
    let text = String::from_utf8_lossy(&encoded);
    assert!(!text.contains("sample-"), "a listed password left the service");
    assert!(harness.simulator.call_log().iter().all(|call| !call.used_query_string), "parameters travel in the body");
}

#[tokio::test]
async fn domain_lifecycle_through_every_mutating_rpc() {
    let mut harness = Harness::start(|_| {}).await;
    let client = &mut harness.client;

    let example = get_domain(client, "example.com").await.unwrap();
    assert_eq!(example.r#type(), pb::DomainType::TopLevel);
    assert_eq!(exact(example.disk_quota.as_ref()), Some(2_147_483_648 * 1024));
    assert_eq!(exact(example.bandwidth_used.as_ref()), Some(3 * (1 << 40) + 7));

    let created = client
        .create_domain(pb::CreateDomainRequest {
            server_id: "sim".into(),
            domain_name: "newsite.example".into(),
            password: "n3w-site-pass".into(),
            description: "New site".into(),
            disk_quota: Some(pb::ByteLimit { limit: Some(pb::byte_limit::Limit::Bytes(1 << 30)) }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .domain
        .unwrap();
    assert_eq!(created.name, "newsite.example");
    assert_eq!(exact(created.disk_quota.as_ref()), Some(1 << 30));
    let again = client
        .create_domain(pb::CreateDomainRequest {
            server_id: "sim".into(),
            domain_name: "newsite.example".into(),
            password: "n3w-site-pass".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    let suspend = pb::SuspendDomainRequest {
        server_id: "sim".into(),
        domain_name: "newsite.example".into(),
        reason: "unpaid invoice".into(),
    };
    assert!(!client.suspend_domain(suspend.clone()).await.unwrap().into_inner().already_suspended);
    assert!(client.suspend_domain(suspend).await.unwrap().into_inner().already_suspended);
    let suspended = get_domain(client, "newsite.example").await.unwrap();
    assert!(suspended.suspended);
    assert_eq!(suspended.suspension_reason, "Manually (unpaid invoice)");
    let unsuspend = pb::UnsuspendDomainRequest { server_id: "sim".into(), domain_name: "newsite.example".into() };
    assert!(!client.unsuspend_domain(unsuspend.clone()).await.unwrap().into_inner().already_active);
    assert!(client.unsuspend_domain(unsuspend).await.unwrap().into_inner().already_active);

    let modified = client
        .modify_domain(pb::ModifyDomainRequest {
            server_id: "sim".into(),
            domain_name: "newsite.example".into(),
            disk_quota: Some(pb::ByteLimit { limit: Some(pb::byte_limit::Limit::Unlimited(true)) }),
            bandwidth_limit: Some(pb::ByteLimit { limit: Some(pb::byte_limit::Limit::Bytes(5 << 30)) }),
            new_password: "an0ther-pass".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .domain
        .unwrap();
    assert_eq!(modified.disk_quota.unwrap().amount, Some(pb::byte_amount::Amount::Unlimited(true)));
    assert_eq!(exact(modified.bandwidth_limit.as_ref()), Some(5 << 30));
    let modify_args = &calls_of(&harness.simulator, "modify-domain")[0];
    assert!(modify_args.windows(2).any(|pair| pair == ["--quota", "UNLIMITED"]), "{modify_args:?}");
    assert!(modify_args.windows(2).any(|pair| pair == ["--bw", "5368709120"]), "{modify_args:?}");

    client
        .delete_domain(pb::DeleteDomainRequest { server_id: "sim".into(), domain_name: "newsite.example".into() })
        .await
        .unwrap();
    let gone = get_domain(client, "newsite.example").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let info = gone.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "DOMAIN_NOT_FOUND");
    assert_eq!(info.domain, "mesh.virtualmin.v1");
    for key in
        ["operation", "server_id", "server_hostname", "timestamp", "correlation_id", "sanitized_params", "version"]
    {
        assert!(info.metadata.contains_key(key), "ErrorInfo lacks {key}: {:?}", info.metadata);
    }
    assert_eq!(info.metadata["operation"], "list-domains");
    assert_eq!(info.metadata["server_id"], "sim");
    assert_eq!(info.metadata["server_hostname"], "127.0.0.1");
    assert_eq!(info.metadata["sanitized_params"], "multiline domain=newsite.example");

    // The create-domain password travelled to Virtualmin and nowhere else.
    let create_args = &calls_of(&harness.simulator, "create-domain")[0];
    assert!(create_args.windows(2).any(|pair| pair == ["--pass", "n3w-site-pass"]));
    assert!(!format!("{:?}", again.metadata()).contains("n3w-site-pass"));
    assert!(!again.get_error_details().error_info().unwrap().metadata.values().any(|v| v.contains("n3w-site-pass")));
}

#[tokio::test]
async fn backups_are_operations_to_poll() {
    let mut harness = Harness::start(|_| {}).await;
    let client = &mut harness.client;
    let operation_id = client
        .backup_domain(pb::BackupDomainRequest {
            server_id: "sim".into(),
            domain_name: "example.com".into(),
            destination_path: "/backup/newsite.tar.gz".into(),
            compression: pb::BackupCompression::Zstd.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .operation_id;
    let mut operation = pb::BackupOperation::default();
    for _ in 0..200 {
        let request = pb::GetBackupOperationRequest { operation_id: operation_id.clone() };
        operation = client.get_backup_operation(request).await.unwrap().into_inner().operation.unwrap();
        if operation.state() != pb::BackupState::Running {
            break;
        }
        // Polling the operation is the API under test; each round asks the service again.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(operation.state(), pb::BackupState::Succeeded);
    assert!(matches!(operation.final_size.and_then(|s| s.amount), Some(pb::byte_amount::Amount::Range(_))));

    let backup_args = &calls_of(&harness.simulator, "backup-domain")[0];
    assert_eq!(
        backup_args,
        &["--domain", "example.com", "--dest", "/backup/newsite.tar.gz", "--all-features", "--compression", "zstd"]
    );
}

#[tokio::test]
async fn reads_servers_plans_bandwidth_info_and_config() {
    let mut harness = Harness::start(|_| {}).await;
    let client = &mut harness.client;

    let servers = client.list_servers(pb::ListServersRequest { check_health: true }).await.unwrap().into_inner();
    assert_eq!(servers.servers.len(), 1);
    assert_eq!(servers.servers[0].health.as_ref().unwrap().state(), pb::HealthState::Healthy);
    let health = client.check_server_health(pb::CheckServerHealthRequest { server_id: "sim".into() }).await.unwrap();
    assert_eq!(health.into_inner().health.unwrap().state(), pb::HealthState::Healthy);

    let plans = client.list_plans(pb::ListPlansRequest { server_id: "sim".into() }).await.unwrap().into_inner().plans;
    assert_eq!(plans.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["Default Plan", "Starter 5G"]);
    assert_eq!(exact(plans[1].disk_quota.as_ref()), Some(5_242_880 * 1024));
    assert_eq!(plans[0].max_domains, None);

    let usage = client
        .get_bandwidth(pb::GetBandwidthRequest {
            server_id: "sim".into(),
            domain_names: vec!["example.com".into()],
            start_date: Some(pb::Date { year: 2025, month: 11, day: 1 }),
            end_date: Some(pb::Date { year: 2025, month: 11, day: 3 }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.domains.len(), 1);
    assert_eq!(usage.domains[0].days.len(), 3);
    let day = &usage.domains[0].days[0];
    assert_eq!(day.total_bytes, day.traffic.iter().map(|t| t.bytes).sum::<u64>());
    assert_eq!(
        calls_of(&harness.simulator, "list-bandwidth")[0],
        ["--domain", "example.com", "--start", "2025-11-01", "--end", "2025-11-03", "--simple-multiline"]
    );

    let info = client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap();
    let info = info.into_inner();
    assert_eq!(info.virtualmin_version, "8.1.0");
    assert_eq!(info.reported_hostname, "vm1.hosting.example");
    assert_eq!(info.domain_count, 40);

    let config = client.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(config.timeouts.unwrap().api_request.unwrap().seconds, 30);
    assert_eq!(config.max_retries, 3);
    assert_eq!(config.servers[0].scheme, "http");

    let unknown = client.list_plans(pb::ListPlansRequest { server_id: "nope".into() }).await.unwrap_err();
    assert_eq!((unknown.code(), reason(&unknown).as_str()), (Code::NotFound, "SERVER_NOT_FOUND"));
}

#[tokio::test]
async fn injection_attempts_never_reach_the_simulator() {
    let mut harness = Harness::start(|_| {}).await;
    let attempts = [
        pb::CreateDomainRequest {
            server_id: "sim".into(),
            domain_name: "victim.example".into(),
            password: "pw".into(),
            description: "x\n--pass\nhacked".into(),
            ..Default::default()
        },
        pb::CreateDomainRequest {
            server_id: "sim".into(),
            domain_name: "victim.example\n--domain\nexample.com".into(),
            password: "pw".into(),
            ..Default::default()
        },
        pb::CreateDomainRequest {
            server_id: "sim".into(),
            domain_name: "victim.example".into(),
            password: "pw\r\n--all-domains".into(),
            ..Default::default()
        },
        pb::CreateDomainRequest {
            server_id: "sim".into(),
            domain_name: "victim.example".into(),
            password: "pw".into(),
            contact_email: "--template".into(),
            ..Default::default()
        },
    ];
    for attempt in attempts {
        let status = harness.client.create_domain(attempt).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(!status.message().contains("pw\r\n"), "the refused secret is not echoed");
    }
    let suspend = pb::SuspendDomainRequest {
        server_id: "sim".into(),
        domain_name: "example.com".into(),
        reason: "late\n--subservers".into(),
    };
    let status = harness.client.suspend_domain(suspend).await.unwrap_err();
    assert_eq!(reason(&status), "UNSAFE_VALUE");
    let log = harness.simulator.call_log();
    assert!(log.is_empty(), "nothing reached the simulator: {log:?}");
}

#[tokio::test]
async fn retries_only_read_only_programs_on_ambiguous_failures() {
    let mut harness = Harness::start(|_| {}).await;
    harness.simulator.inject(FaultRule::always(Fault::Http503).for_program("list-plans").times(2));
    harness.client.list_plans(pb::ListPlansRequest { server_id: "sim".into() }).await.unwrap();
    assert_eq!(calls_of(&harness.simulator, "list-plans").len(), 3, "two 503s, then success");

    harness.simulator.inject(FaultRule::always(Fault::ConnectionReset).for_program("info").times(1));
    harness.client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap();
    assert_eq!(calls_of(&harness.simulator, "info").len(), 2, "a reset read is retried");

    harness.simulator.inject(FaultRule::always(Fault::Http503).for_program("disable-domain").times(1));
    let suspend =
        pb::SuspendDomainRequest { server_id: "sim".into(), domain_name: "example.com".into(), ..Default::default() };
    let status = harness.client.suspend_domain(suspend).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "VIRTUALMIN_HTTP_ERROR"));
    assert_eq!(calls_of(&harness.simulator, "disable-domain").len(), 1, "a mutation is never retried blindly");

    harness.simulator.inject(FaultRule::always(Fault::Http500).for_program("list-plans").times(1));
    let status = harness.client.list_plans(pb::ListPlansRequest { server_id: "sim".into() }).await.unwrap_err();
    assert_eq!(reason(&status), "VIRTUALMIN_HTTP_ERROR");
    assert_eq!(calls_of(&harness.simulator, "list-plans").len(), 4, "a 500 is not retried");
}

#[tokio::test]
async fn per_server_rate_limit_holds() {
    let mut harness = Harness::start(|config| config.rate_limit_max_calls = 3).await;
    for _ in 0..3 {
        harness.client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap();
    }
    let status =
        harness.client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "RATE_LIMITED");
    let retry_delay = status.get_error_details().retry_info().and_then(|info| info.retry_delay).unwrap();
    assert!(retry_delay > Duration::from_secs(3000), "{retry_delay:?}");
    assert_eq!(calls_of(&harness.simulator, "info").len(), 3);
}

#[tokio::test]
async fn a_reload_changes_the_next_calls_timeout() {
    let mut harness = Harness::start(|config| config.max_retries = 0).await;
    harness.simulator.inject(FaultRule::always(Fault::Latency(Duration::from_millis(400))).for_program("info"));
    harness.client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap();

    harness.reload(|config| config.api_request_timeout = Duration::from_millis(100));
    let status =
        harness.client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::DeadlineExceeded, "VIRTUALMIN_TIMEOUT"));
    let config = harness.client.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(config.timeouts.unwrap().api_request.unwrap().nanos, 100_000_000);

    harness.reload(|config| config.api_request_timeout = Duration::from_secs(5));
    harness.client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap();
}

#[tokio::test]
async fn a_fifty_megabyte_reply_is_refused_without_buffering_it() {
    let mut harness = Harness::start(|config| config.max_retries = 0).await;
    harness.simulator.inject(FaultRule::always(Fault::HugeBody(50 << 20)).for_program("list-domains"));
    let before = mesh_kit::memory::MemoryStats::current().map(|m| m.resident_bytes);
    let request = pb::ListDomainsRequest { server_id: "sim".into(), ..Default::default() };
    let status = harness.client.list_domains(request).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::ResourceExhausted, "RESPONSE_TOO_LARGE"));
    let after = mesh_kit::memory::MemoryStats::current().map(|m| m.resident_bytes);
    if let (Some(before), Some(after)) = (before, after) {
        // The cap is 20 MiB; the 50 MB body is never held.
        assert!(after.saturating_sub(before) < 40 << 20, "rss grew by {} bytes", after - before);
    }
}

#[tokio::test]
async fn misbehaving_servers_give_precise_errors() {
    let mut harness = Harness::start(|config| config.max_retries = 0).await;
    let cases = [
        (Fault::Unauthorized, Code::FailedPrecondition, "VIRTUALMIN_AUTH_FAILED"),
        (Fault::LoginPage, Code::FailedPrecondition, "VIRTUALMIN_AUTH_FAILED"),
        (Fault::MalformedJson, Code::Internal, "MALFORMED_RESPONSE"),
        (Fault::TruncatedBody, Code::Unavailable, "TRUNCATED_RESPONSE"),
        (Fault::FailForDomains(vec!["example.com".into()]), Code::FailedPrecondition, "PROGRAM_FAILED"),
    ];
    for (fault, code, expected_reason) in cases {
        harness.simulator.inject(FaultRule::always(fault.clone()).times(1));
        let status = get_domain(&mut harness.client, "example.com").await.unwrap_err();
        assert_eq!((status.code(), reason(&status).as_str()), (code, expected_reason), "{fault:?}: {status:?}");
        assert!(!format!("{status:?}").contains(SIM_PASSWORD));
    }
    let status = get_domain(&mut harness.client, "nosuch.example").await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::NotFound, "DOMAIN_NOT_FOUND"));

    harness.reload(|config| {
        config.servers[0].password = Some(ConfigSecret::new(SecretString::from("wrong-password")));
    });
    let status = get_domain(&mut harness.client, "example.com").await.unwrap_err();
    assert_eq!(reason(&status), "VIRTUALMIN_AUTH_FAILED");
    assert!(!format!("{status:?}").contains("wrong-password"));
}

// === the write timeout ===

/// A form body of about `bytes`: repeated `domain=` values of 1000 characters, as
/// a listing of many domains would send, larger than the socket buffers.
fn oversized_params(bytes: usize) -> RemoteParams {
    let value = "a".repeat(1000);
    (0..bytes / 1008).fold(RemoteParams::new(), |params, _| params.value("domain", "domain_names", &value).unwrap())
}

#[tokio::test]
async fn a_request_the_server_stops_reading_ends_at_the_write_timeout() {
    let harness = Harness::start(|config| {
        config.max_retries = 0;
        config.write_timeout = Duration::from_millis(300);
    })
    .await;
    harness.simulator.inject(FaultRule::always(Fault::StallRequestBody(Duration::from_secs(60))).times(1));
    let client = VirtualminClient::new(harness.settings.subscribe(), mesh_kit::ConfigSource::default()).unwrap();
    let params = oversized_params(24 << 20);
    let error = client
        .call("sim", Program::ListBandwidth, &params, TimeoutClass::UsageSync)
        .await
        .expect_err("the write stalls");
    assert_eq!(error.error.reason(), "VIRTUALMIN_WRITE_TIMEOUT", "{error}");
    assert!(error.to_string().contains("`sim`"), "{error}");
    assert!(calls_of(&harness.simulator, "list-bandwidth").is_empty(), "the program never ran");
}

#[tokio::test]
async fn the_write_timeout_does_not_bound_the_wait_for_the_reply() {
    let mut harness = Harness::start(|config| {
        config.max_retries = 0;
        config.write_timeout = Duration::from_millis(50);
    })
    .await;
    // The request is taken at once; the program then takes longer than the write timeout.
    harness.simulator.inject(FaultRule::always(Fault::Latency(Duration::from_millis(300))).for_program("info"));
    let info = harness.client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap();
    assert_eq!(info.into_inner().virtualmin_version, "8.1.0");
}

// === TLS: private CA and certificate pin ===

/// A CA and a `localhost` certificate it signed, made for this test run.
struct TestPki {
    ca_pem: String,
    leaf_der: Vec<u8>,
    server: Arc<rustls::ServerConfig>,
}

fn test_pki() -> TestPki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "mesh test ca");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    TestPki { ca_pem: ca.pem(), leaf_der: leaf.der().to_vec(), server: Arc::new(server) }
}

fn write_temp(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mesh-virtualmin-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().fold(String::new(), |mut hex, byte| {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

async fn server_info(harness: &mut Harness) -> Result<pb::GetServerInfoResponse, tonic::Status> {
    Ok(harness.client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await?.into_inner())
}

#[tokio::test]
async fn https_with_the_servers_ca_works_and_with_another_ca_is_refused() {
    let pki = test_pki();
    let trusted = write_temp("trusted-ca.pem", &pki.ca_pem);
    let mut harness = Harness::start_tls(pki.server.clone(), |config| {
        config.servers[0].ca_file = Some(trusted.clone());
    })
    .await;
    assert_eq!(server_info(&mut harness).await.unwrap().virtualmin_version, "8.1.0");
    let config = harness.client.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
    assert!(config.servers[0].custom_ca && config.servers[0].scheme == "https");

    let other = write_temp("other-ca.pem", &test_pki().ca_pem);
    harness.reload(|config| config.servers[0].ca_file = Some(other.clone()));
    let status = server_info(&mut harness).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "VIRTUALMIN_TLS_FAILED"), "{status:?}");
    assert!(status.message().contains("server `sim`"), "names the server: {}", status.message());
    assert!(status.message().to_lowercase().contains("certificate"), "says why: {}", status.message());
    assert!(!format!("{status:?}").contains(SIM_PASSWORD));
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.metadata["server_hostname"], "localhost");
    assert_eq!(calls_of(&harness.simulator, "info").len(), 1, "the refused handshake sent nothing");

    // Without a CA file the OS roots are used, which do not know the test CA.
    harness.reload(|config| config.servers[0].ca_file = None);
    let status = server_info(&mut harness).await.unwrap_err();
    assert_eq!(reason(&status), "VIRTUALMIN_TLS_FAILED");
    std::fs::remove_file(trusted).ok();
    std::fs::remove_file(other).ok();
}

#[tokio::test]
async fn a_pinned_certificate_is_accepted_and_any_other_refused() {
    let pki = test_pki();
    let pin = sha256_hex(&pki.leaf_der);
    let colon_pin =
        pin.as_bytes().chunks(2).map(|pair| std::str::from_utf8(pair).unwrap()).collect::<Vec<_>>().join(":");
    let mut harness =
        Harness::start_tls(pki.server.clone(), |config| config.servers[0].pinned_sha256 = Some(colon_pin)).await;
    assert_eq!(server_info(&mut harness).await.unwrap().virtualmin_version, "8.1.0");
    let config = harness.client.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
    assert!(config.servers[0].certificate_pinned);

    let other_pin = sha256_hex(&test_pki().leaf_der);
    harness.reload(|config| config.servers[0].pinned_sha256 = Some(other_pin));
    let status = server_info(&mut harness).await.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "VIRTUALMIN_TLS_FAILED"), "{status:?}");
    assert!(status.message().contains("server `sim`") && status.message().contains("pinned"), "{}", status.message());
    assert!(!format!("{status:?}").contains(SIM_PASSWORD));
    assert_eq!(calls_of(&harness.simulator, "info").len(), 1);
}

// === idempotency keys ===

fn keyed_create(domain_name: &str, key: &str) -> pb::CreateDomainRequest {
    pb::CreateDomainRequest {
        server_id: "sim".into(),
        domain_name: domain_name.into(),
        password: "k3yed-pass".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_repeated_create_with_the_same_key_creates_once() {
    let mut harness = Harness::start(|_| {}).await;
    let first = harness.client.create_domain(keyed_create("once.example", "key-1")).await.unwrap().into_inner();
    let again = harness.client.create_domain(keyed_create("once.example", "key-1")).await.unwrap().into_inner();
    assert_eq!(first.domain.as_ref().unwrap().id, again.domain.as_ref().unwrap().id);
    assert_eq!(calls_of(&harness.simulator, "create-domain").len(), 1, "the repeat did not create again");

    let reused = harness.client.create_domain(keyed_create("other.example", "key-1")).await.unwrap_err();
    assert_eq!((reused.code(), reason(&reused).as_str()), (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED"));
    let bad_key = harness.client.create_domain(keyed_create("other.example", "has space")).await.unwrap_err();
    assert_eq!(bad_key.code(), Code::InvalidArgument);
    assert_eq!(calls_of(&harness.simulator, "create-domain").len(), 1);

    // Without a key, a repeat reaches Virtualmin and is told the domain exists.
    let unkeyed = harness.client.create_domain(keyed_create("once.example", "")).await.unwrap_err();
    assert_eq!(unkeyed.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn a_keyed_create_whose_outcome_was_lost_succeeds_on_repeat() {
    let mut harness = Harness::start(|config| config.max_retries = 0).await;
    // The domain is created, but the reply is cut short: the caller cannot know.
    harness.simulator.inject(FaultRule::always(Fault::TruncatedBody).for_program("create-domain").times(1));
    let lost = harness.client.create_domain(keyed_create("lost.example", "key-lost")).await.unwrap_err();
    assert_eq!(reason(&lost), "TRUNCATED_RESPONSE");
    let repeat = harness.client.create_domain(keyed_create("lost.example", "key-lost")).await.unwrap().into_inner();
    assert_eq!(repeat.domain.unwrap().name, "lost.example");
    assert_eq!(calls_of(&harness.simulator, "create-domain").len(), 2, "ran again, answered `already hosting`");
    assert_eq!(harness.simulator.domain_names().iter().filter(|name| *name == "lost.example").count(), 1);
}

#[tokio::test]
async fn a_repeated_backup_with_the_same_key_is_one_operation() {
    let mut harness = Harness::start(|_| {}).await;
    let request = pb::BackupDomainRequest {
        server_id: "sim".into(),
        domain_name: "example.com".into(),
        destination_path: "/backup/keyed.tar.gz".into(),
        idempotency_key: "backup-key".into(),
        ..Default::default()
    };
    let first = harness.client.backup_domain(request.clone()).await.unwrap().into_inner().operation_id;
    let again = harness.client.backup_domain(request.clone()).await.unwrap().into_inner().operation_id;
    assert_eq!(first, again);
    let mut state = pb::BackupState::Running;
    for _ in 0..200 {
        let poll = pb::GetBackupOperationRequest { operation_id: first.clone() };
        state = harness.client.get_backup_operation(poll).await.unwrap().into_inner().operation.unwrap().state();
        if state != pb::BackupState::Running {
            break;
        }
        // Polling the operation is the API under test; each round asks the service again.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, pb::BackupState::Succeeded);
    assert_eq!(calls_of(&harness.simulator, "backup-domain").len(), 1);
}

// === per-program metrics ===

#[tokio::test]
async fn call_metrics_count_calls_errors_and_latency_per_program() {
    let mut harness = Harness::start(|config| config.max_retries = 0).await;
    get_domain(&mut harness.client, "example.com").await.unwrap();
    harness.simulator.inject(FaultRule::always(Fault::Http500).for_program("list-domains").times(1));
    get_domain(&mut harness.client, "example.com").await.unwrap_err();
    let metrics = harness.client.get_call_metrics(pb::GetCallMetricsRequest {}).await.unwrap().into_inner();
    let list = metrics.programs.iter().find(|p| p.program == "list-domains").unwrap();
    assert_eq!((list.calls, list.errors), (2, 1));
    assert_eq!(list.errors_by_reason, [pb::ErrorCount { reason: "VIRTUALMIN_HTTP_ERROR".into(), count: 1 }]);
    assert_ne!(list.total_latency.unwrap(), prost_types::Duration::default());
    let buckets = &list.latency_buckets;
    assert!(buckets.windows(2).all(|pair| pair[0].cumulative_count <= pair[1].cumulative_count));
    assert_eq!(buckets.last().unwrap().cumulative_count, 2);
    let untouched = metrics.programs.iter().find(|p| p.program == "backup-domain").unwrap();
    assert_eq!(untouched.calls, 0);
    assert!(metrics.prometheus_text.contains("virtualmin_call_duration_seconds_count{program=\"list-domains\"} 2"));
}
