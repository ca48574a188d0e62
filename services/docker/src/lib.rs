//! The `DockerOps` service: batched, bounded-concurrency start, stop, restart,
//! stats, create and remove of the containers of one Docker engine, plus
//! listing, an event stream and engine health. Only containers carrying the
//! configured management label are ever read or changed. `engine` is the one
//! bollard client; `grpc` adapts it to `mesh.docker.v1`. Server setup, config
//! loading and telemetry live in `mesh-kit`.
//!
//! # Layout
//! - [`engine`]: [`DockerEngine`], every engine call, behind the scope check.
//! - [`scope`]: [`ManagementScope`] and label selectors.
//! - [`batch`]: bounded concurrency with results in request order.
//! - [`container`]: ids, states, summaries and [`ContainerSpec`] checks.
//! - [`stats`]: [`ResourceUsage`] from engine samples, as `docker stats` computes it.
//! - `stats_feed`: live stats streams that answer repeated `GetStats` at once.
//! - `transport`: the engine's unix-socket transport with pooled connections.
//! - [`config`]: [`DockerConfig`], the service's settings.
//! - [`error`]: [`DockerError`] with its reason and offending field.
//! - [`grpc`]: [`DockerOpsGrpc`], the `mesh.docker.v1.DockerOps` adapter.

#![forbid(unsafe_code)]

pub mod batch;
pub mod config;
pub mod container;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod scope;
pub mod stats;
mod stats_feed;
mod transport;

use std::time::Duration;

pub use config::DockerConfig;
pub use container::ContainerSpec;
pub use engine::{ActionOutcome, ContainerAction, DockerEngine, StatsOutcome};
pub use error::DockerError;
pub use grpc::DockerOpsGrpc;
use mesh_kit::{ConfigWatch, MeshServer, Runtime, ServeError};
use mesh_proto::docker::v1::FILE_DESCRIPTOR_SET;
use mesh_proto::docker::v1::docker_ops_server::DockerOpsServer;
pub use scope::{LabelSelector, ManagementScope};
pub use stats::ResourceUsage;
use tracing::info;

/// How often the config file is checked for changes.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The longest CPU sample window a `GetStats` may ask for.
pub const MAX_CPU_SAMPLE_WINDOW: Duration = Duration::from_secs(10);

/// Runs the `DockerOps` service until `rt.shutdown` is cancelled. The engine
/// is connected on first use, so a stopped engine does not stop the service:
/// calls answer UNAVAILABLE until it is back.
pub async fn run(rt: Runtime) -> Result<(), ServeError> {
    let config_source = DockerConfig::with_docker_host(rt.config_source.clone());
    let config: ConfigWatch<DockerConfig> =
        mesh_kit::config::load_and_watch(config_source, CONFIG_POLL_INTERVAL, rt.shutdown.clone())?;
    let engine = {
        let settings = config.borrow();
        info!(host = %settings.host, scope = %settings.scope(), "docker ops ready");
        DockerEngine::new(&settings)
    };
    let server = MeshServer::new(rt.server_settings);
    let max_message_bytes = server.settings().max_message_bytes;
    let service = DockerOpsServer::new(DockerOpsGrpc::new(engine, config, rt.shutdown.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    server.add_service(service, FILE_DESCRIPTOR_SET).serve(rt.listener, rt.shutdown).await
}
