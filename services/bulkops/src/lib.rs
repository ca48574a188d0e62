//! The BulkOps service: durable bulk jobs (suspend, activate, backup, health
//! check) over many Virtualmin domains, ATOMIC (stop at the first failure and
//! undo what was done) or BEST_EFFORT (try all, aggregate). A job and each of
//! its targets are persisted in SQLite (the embedded default) or PostgreSQL
//! before any domain is touched, so a job survives a crash of the service: it
//! resumes from the stored state and no domain is acted on twice. Domains are
//! reached only through the VirtualminGateway service, over gRPC.
//!
//! # Layout
//! - [`model`]: kinds, modes, job and target states, the aggregate result.
//! - [`schema`]: the `bulk_jobs` and `bulk_targets` entities and migration.
//! - [`store`]: [`JobStore`], every query, and the replicas' row leases.
//! - [`virtualmin`]: [`Virtualmin`], the calls to VirtualminGateway.
//! - [`runner`]: [`JobRunner`], claiming and running jobs; crash safety.
//! - [`jobs`]: [`Jobs`], the operations: validate, start, read, cancel.
//! - [`config`]: [`BulkOpsConfig`], the service's settings.
//! - [`error`]: [`BulkOpsError`] with its code, reason and field.
//! - [`grpc`]: [`BulkOpsGrpc`], the `mesh.bulkops.v1.BulkOps` adapter.

#![forbid(unsafe_code)]
// Product names (SQLite, PostgreSQL, Virtualmin, VirtualminGateway) are prose in these docs, not code.
#![allow(clippy::doc_markdown)]

pub mod config;
pub mod error;
pub mod grpc;
pub mod jobs;
pub mod model;
pub mod runner;
pub mod schema;
pub mod store;
pub mod virtualmin;

pub use config::BulkOpsConfig;
pub use error::BulkOpsError;
pub use grpc::BulkOpsGrpc;
pub use jobs::{JobLimits, Jobs};
use mesh_kit::{MeshServer, Runtime, ServeError};
use mesh_proto::bulkops::v1::FILE_DESCRIPTOR_SET;
use mesh_proto::bulkops::v1::bulk_ops_server::BulkOpsServer;
pub use runner::{JobRunner, RunnerSettings};
pub use store::JobStore;
use tracing::info;
pub use virtualmin::Virtualmin;

/// SQLite page cache per connection: jobs are small; the default is plenty.
const SQLITE_CACHE_KIB: u32 = 2048;

/// Runs the BulkOps service until `rt.shutdown` is cancelled: opens (and
/// migrates) the database, starts the job runner (which resumes unfinished
/// jobs), and serves.
pub async fn run(rt: Runtime) -> Result<(), ServeError> {
    let settings = config::load(&rt.config_source)?;
    let jobs = start(&settings, rt.shutdown.clone()).await?;
    let server = MeshServer::new(rt.server_settings);
    let max_message_bytes = server.settings().max_message_bytes;
    let service = BulkOpsServer::new(BulkOpsGrpc::new(jobs))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    server.add_service(service, FILE_DESCRIPTOR_SET).serve(rt.listener, rt.shutdown).await
}

/// Opens the store, connects VirtualminGateway and spawns the runner, which
/// stops with `shutdown`.
pub async fn start(settings: &BulkOpsConfig, shutdown: mesh_kit::CancellationToken) -> Result<Jobs, ServeError> {
    let location = settings.database_location();
    let pool = mesh_kit::database::PoolSettings {
        max_connections: settings.max_connections,
        connect_timeout: settings.connect_timeout,
        sqlite_cache_kib: SQLITE_CACHE_KIB,
    };
    let store = JobStore::open(&location, pool).await.map_err(|source| {
        // `ServeError` has no variant for a service's own start-up failure;
        // `Io` carries it with its cause chain.
        ServeError::Io(std::io::Error::other(StartupError { place: location.describe(), source }))
    })?;
    let virtualmin = Virtualmin::connect(&settings.virtualmin_endpoint)?;
    let runner_settings = RunnerSettings {
        job_timeout: settings.api_bulk_timeout,
        lease_duration: settings.lease_duration,
        poll_interval: settings.poll_interval,
        backup_poll_interval: settings.backup_poll_interval,
    };
    let owner = format!("bulkops-{}", uuid::Uuid::now_v7().simple());
    info!(owner, endpoint = settings.virtualmin_endpoint, "bulk job runner starting");
    let runner = JobRunner::new(store.clone(), virtualmin.clone(), runner_settings, owner);
    tokio::spawn(runner.clone().run(shutdown));
    let limits = JobLimits {
        max_concurrency: settings.max_concurrency,
        default_concurrency: settings.default_concurrency,
        max_targets: settings.max_targets,
    };
    Ok(Jobs::new(store, virtualmin, runner, limits))
}

/// The database could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the bulkops database at {place}: {source}")]
struct StartupError {
    /// The file, or the URL without its password.
    place: String,
    source: sea_orm::DbErr,
}
