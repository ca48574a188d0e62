//! What the `VirtualminGateway` tests share: the simulator on `127.0.0.1:0`,
//! the service's settings naming it as the one server `sim`, and the service
//! itself on `127.0.0.1:0` with a generated client connected to it.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of this module

use std::sync::Arc;
use std::time::Duration;

use mesh_kit::{CancellationToken, MeshServer, ServerSettings};
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;
use mesh_proto::virtualmin::v1::virtualmin_gateway_server::VirtualminGatewayServer;
use mesh_virtualmin::config::{ConfigSecret, Scheme, ServerEntry};
use mesh_virtualmin::{Gateway, VirtualminClient, VirtualminConfig, VirtualminGrpc};
use mesh_virtualmin_sim::Simulator;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;

/// The simulator's root password in [`simulator_config`]; tests look for it
/// in what must never carry it.
pub const SIM_PASSWORD: &str = "sim-password-7f3a";

/// Serves `simulator` on `127.0.0.1:0` until `shutdown`, over HTTPS with
/// `tls` when given and plain HTTP otherwise, and returns its port.
pub async fn serve_simulator(
    simulator: &Simulator,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: &CancellationToken,
) -> u16 {
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_port = sim_listener.local_addr().unwrap().port();
    match tls {
        None => drop(tokio::spawn(simulator.clone().serve(sim_listener, shutdown.clone()))),
        Some(tls) => drop(tokio::spawn(simulator.clone().serve_tls(sim_listener, tls, shutdown.clone()))),
    }
    sim_port
}

/// The service's settings with one server, `sim`: the simulator on
/// `sim_port` over plain HTTP as `root` with [`SIM_PASSWORD`]. Retries wait
/// 5 ms, so the tests that make calls fail do not wait on the default delay.
pub fn simulator_config(sim_port: u16) -> VirtualminConfig {
    VirtualminConfig {
        retry_delay: Duration::from_millis(5),
        servers: vec![ServerEntry {
            id: "sim".to_owned(),
            hostname: "127.0.0.1".to_owned(),
            port: sim_port,
            scheme: Scheme::Http,
            username: "root".to_owned(),
            password: Some(ConfigSecret::new(SecretString::from(SIM_PASSWORD))),
            password_file: None,
            password_env: None,
            ca_file: None,
            pinned_sha256: None,
        }],
        ..VirtualminConfig::default()
    }
}

/// Serves the `VirtualminGateway` on `127.0.0.1:0` until `shutdown`,
/// following `settings` as the kit's reloader would feed it, and returns a
/// client connected to it. `max_message_bytes`, when given, raises both the
/// service's encoding limit and the client's decoding limit (for the tests
/// whose answers are large); `None` keeps tonic's defaults.
pub async fn serve_gateway(
    settings: watch::Receiver<Arc<VirtualminConfig>>,
    max_message_bytes: Option<usize>,
    shutdown: &CancellationToken,
) -> VirtualminGatewayClient<Channel> {
    let client = VirtualminClient::new(settings.clone(), mesh_kit::ConfigSource::default()).unwrap();
    let gateway = Gateway::new(client, settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut service = VirtualminGatewayServer::new(VirtualminGrpc::new(gateway));
    if let Some(max_message_bytes) = max_message_bytes {
        service = service.max_encoding_message_size(max_message_bytes);
    }
    let server = MeshServer::new(ServerSettings::default())
        .add_service(service, mesh_proto::virtualmin::v1::FILE_DESCRIPTOR_SET);
    tokio::spawn(server.serve(listener, shutdown.clone()));
    let client = VirtualminGatewayClient::connect(format!("http://{address}")).await.unwrap();
    match max_message_bytes {
        Some(max_message_bytes) => client.max_decoding_message_size(max_message_bytes),
        None => client,
    }
}
