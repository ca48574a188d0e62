//! What the service logs, captured by a subscriber: failures, retries and
//! slow calls are there; no password ever is (neither a domain's, nor the
//! server's, nor its Basic credentials). Alone in its test binary, because
//! `tracing` decides per call site which subscribers care, and other tests
//! running at the same time without one could make it skip this one's.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mesh_kit::CancellationToken;
use mesh_proto::virtualmin::v1 as pb;
use mesh_virtualmin::VirtualminConfig;
use mesh_virtualmin::config::ConfigSecret;
use mesh_virtualmin_sim::{Fault, FaultRule, Simulator, SimulatorConfig};
use secrecy::SecretString;
use support::{SIM_PASSWORD, serve_gateway, serve_simulator, simulator_config};
use tokio::sync::watch;

/// Log lines written while a test runs, shared with the subscriber.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn passwords_never_reach_a_log_line_and_slow_calls_do() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime is single-threaded, so every task of the service logs through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let shutdown = CancellationToken::new();
    let simulator = Simulator::new(SimulatorConfig { password: SIM_PASSWORD.to_owned(), ..SimulatorConfig::default() });
    let sim_port = serve_simulator(&simulator, None, &shutdown).await;
    let config = VirtualminConfig { max_retries: 1, ..simulator_config(sim_port) };
    let (settings, receiver) = watch::channel(Arc::new(config));
    let mut client = serve_gateway(receiver, None, &shutdown).await;
    let get_domain = pb::GetDomainRequest { server_id: "sim".into(), domain_name: "example.com".into() };
    let created = pb::CreateDomainRequest {
        server_id: "sim".into(),
        domain_name: "logged.example".into(),
        password: "cr3ate-secret".into(),
        ..Default::default()
    };
    client.create_domain(created.clone()).await.unwrap();
    client.create_domain(created).await.unwrap_err();
    let modify = pb::ModifyDomainRequest {
        server_id: "sim".into(),
        domain_name: "logged.example".into(),
        new_password: "m0dify-secret".into(),
        ..Default::default()
    };
    simulator.inject(FaultRule::always(Fault::Http500).for_program("modify-domain").times(1));
    client.modify_domain(modify).await.unwrap_err();
    simulator.inject(FaultRule::always(Fault::ConnectionReset).for_program("list-domains").times(1));
    client.get_domain(get_domain.clone()).await.unwrap();
    simulator.inject(FaultRule::always(Fault::Latency(Duration::from_millis(150))).for_program("info").times(1));
    client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap();
    settings.send_modify(|config| {
        let mut changed = (**config).clone();
        changed.servers[0].password = Some(ConfigSecret::new(SecretString::from("wr0ng-secret")));
        *config = Arc::new(changed);
    });
    client.get_domain(get_domain.clone()).await.unwrap_err();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("virtualmin call failed") && text.contains("retrying"), "the failures were logged: {text}");
    assert!(text.contains("slow virtualmin operation") && text.contains("program=\"info\""), "{text}");
    for secret in [SIM_PASSWORD, "cr3ate-secret", "m0dify-secret", "wr0ng-secret"] {
        assert!(!text.contains(secret), "`{secret}` reached the log:\n{text}");
    }
    assert!(!text.contains(&STANDARD.encode(format!("root:{SIM_PASSWORD}"))), "no Basic credentials in the log");
    shutdown.cancel();
}
