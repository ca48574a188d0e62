//! `mesh_virtualmin::run` as the `mesh` binary calls it: the server list from
//! `VIRTUALMIN_SERVERS` with the password in another variable, settings from
//! the `[virtualmin]` file section, a file edit reloaded into the next call,
//! and a SIGHUP reloading an edit the file watcher cannot see.

mod support;

use std::time::Duration;

use mesh_kit::{CancellationToken, ConfigSource, Runtime, ServerSettings};
use mesh_proto::virtualmin::v1 as pb;
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;
use mesh_virtualmin_sim::{Simulator, SimulatorConfig};
use support::serve_simulator;
use tokio::net::TcpListener;

#[tokio::test]
async fn run_serves_env_configured_servers_and_reloads_the_file() {
    let shutdown = CancellationToken::new();
    let simulator =
        Simulator::new(SimulatorConfig { password: "from-env-var".to_owned(), ..SimulatorConfig::default() });
    let sim_port = serve_simulator(&simulator, None, &shutdown).await;

    let dir = std::env::temp_dir().join(format!("mesh-virtualmin-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mesh.toml");
    std::fs::write(&file, "[virtualmin]\napi_request_timeout = 30\n").unwrap();
    let mut config_source = ConfigSource::default()
        .with_var(
            "VIRTUALMIN_SERVERS",
            format!(
                "[{{id=sim,hostname=127.0.0.1,port={sim_port},scheme=http,username=root,password_env=SIM_PASSWORD}}]"
            ),
        )
        .with_var("SIM_PASSWORD", "from-env-var")
        .with_var("VIRTUALMIN_RETRY_DELAY", "0.01");
    config_source.file = Some(file.clone());

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let runtime =
        Runtime { listener, server_settings: ServerSettings::default(), config_source, shutdown: shutdown.clone() };
    let service = tokio::spawn(mesh_virtualmin::run(runtime));
    let mut client = VirtualminGatewayClient::connect(format!("http://{address}")).await.unwrap();

    let info = client.get_server_info(pb::GetServerInfoRequest { server_id: "sim".into() }).await.unwrap();
    assert_eq!(info.into_inner().virtualmin_version, "8.1.0");

    std::fs::write(&file, "[virtualmin]\napi_request_timeout = 12.5\n").unwrap();
    let mut reloaded = None;
    // The kit checks the file every 2 s; ask until the new value is served (at most 20 s).
    for _ in 0..400 {
        let config = client.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
        let timeout = config.timeouts.unwrap().api_request.unwrap();
        if timeout.seconds == 12 {
            reloaded = Some(timeout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloaded.map(|t| t.nanos), Some(500_000_000), "the file edit was not reloaded");

    // An edit that keeps the file's modification time is invisible to the watcher: only SIGHUP reloads it.
    let seen_modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let staged = dir.join("mesh.toml.staged");
    std::fs::write(&staged, "[virtualmin]\napi_request_timeout = 7\n").unwrap();
    std::fs::File::options().write(true).open(&staged).unwrap().set_modified(seen_modified).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    // Our own listener keeps SIGHUP from ending the test process whatever the service has registered.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let mut timeout_after_sighup = None;
    for _ in 0..100 {
        let sent = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status();
        assert!(sent.unwrap().success());
        hangups.recv().await;
        let config = client.get_config(pb::GetConfigRequest {}).await.unwrap().into_inner();
        let timeout = config.timeouts.unwrap().api_request.unwrap();
        if timeout.seconds == 7 {
            timeout_after_sighup = Some(timeout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(timeout_after_sighup.map(|t| t.nanos), Some(0), "SIGHUP did not reload the settings");

    shutdown.cancel();
    service.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
