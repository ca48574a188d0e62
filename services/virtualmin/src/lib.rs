//! The `VirtualminGateway` service: typed gRPC over Virtualmin's remote API.
//! A request names a configured server; the client builds the remote program's
//! parameters (refusing anything that would inject an argument), posts them
//! over rustls-verified HTTPS within the operation's timeout, the server's
//! rate limit and concurrency bound, retries only where that is safe, reads a
//! capped body, and parses the multiline JSON straight into typed values.
//! Passwords that Virtualmin lists are never deserialized.
//!
//! # Layout
//! - [`config`]: [`VirtualminConfig`], the `VIRTUALMIN_*` settings and the server list.
//! - [`params`]: [`Program`] and [`RemoteParams`], the injection-proof request builder.
//! - [`client`]: [`VirtualminClient`], transport, timeouts, retries, rate limit, size cap, TLS.
//! - `request_body`: the request body that lets the client enforce the write timeout.
//! - [`wire`]: response framing and the JSON envelope, decoded by content type.
//! - [`domain`]: [`Domain`], [`Plan`], bandwidth and server info, plain Rust.
//! - [`nice_size`]: Webmin's human sizes read back into byte intervals.
//! - [`gateway`]: [`Gateway`], the operations behind each RPC, backups as operations.
//! - [`idempotency`]: [`idempotency::IdempotencyKeys`], keyed create and backup calls answered once.
//! - [`metrics`]: per-program latency histograms and error counts.
//! - [`error`]: [`VirtualminError`] and the [`ErrorContext`] every error carries.
//! - [`grpc`]: [`VirtualminGrpc`], the `mesh.virtualmin.v1.VirtualminGateway` adapter.

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod idempotency;
pub mod metrics;
pub mod nice_size;
pub mod params;
mod request_body;
pub mod wire;

use std::time::Duration;

pub use client::VirtualminClient;
pub use config::{ServerEntry, VirtualminConfig};
pub use domain::{ByteAmount, Domain, Plan};
pub use error::{CallError, ErrorContext, VirtualminError};
pub use gateway::Gateway;
pub use grpc::VirtualminGrpc;
use mesh_kit::{ConfigWatch, MeshServer, Runtime, ServeError};
use mesh_proto::virtualmin::v1::FILE_DESCRIPTOR_SET;
use mesh_proto::virtualmin::v1::virtualmin_gateway_server::VirtualminGatewayServer;
pub use params::{Program, RemoteParams};
use tracing::info;

/// How often the config file is checked for changes.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the `VirtualminGateway` service until `rt.shutdown` is cancelled.
/// Settings come from `VIRTUALMIN_*` and the `[virtualmin]` file section.
pub async fn run(rt: Runtime) -> Result<(), ServeError> {
    let config: ConfigWatch<VirtualminConfig> =
        mesh_kit::config::load_and_watch(rt.config_source.clone(), CONFIG_POLL_INTERVAL, rt.shutdown.clone())?;
    let client = VirtualminClient::new(config.clone(), rt.config_source.clone())
        .map_err(|problems| ServeError::Config(mesh_kit::ConfigError::Invalid { problems }))?;
    {
        let settings = config.borrow();
        let servers: Vec<&str> = settings.servers.iter().map(|s| s.id.as_str()).collect();
        info!(?servers, "virtualmin gateway ready");
    }
    let gateway = Gateway::new(client, config);
    let server = MeshServer::new(rt.server_settings);
    let max_message_bytes = server.settings().max_message_bytes;
    let service = VirtualminGatewayServer::new(VirtualminGrpc::new(gateway))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    server.add_service(service, FILE_DESCRIPTOR_SET).serve(rt.listener, rt.shutdown).await
}
