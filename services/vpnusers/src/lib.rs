//! The VpnUsers service: VPN accounts in SQLite (the embedded default, a WAL
//! file under the data directory) or PostgreSQL (`DATABASE_URL`), managed in
//! transactional batches, listed with filters and signed keyset page tokens,
//! searched by full text with the same meaning on both backends, counted, and
//! read cache-aside through the Cache service. The domain modules are plain
//! Rust; `grpc` adapts them to `mesh.vpnusers.v1`. Server setup, config
//! loading and telemetry live in `mesh-kit`.
//!
//! # Layout
//! - [`model`]: [`User`] and what a caller may write, with the field checks.
//! - [`filter`]: [`UserFilter`] and [`UserSort`], as one SQL condition.
//! - [`search`]: the words both full-text indexes see, and safe queries.
//! - [`page_token`]: signed, tamper-evident page tokens.
//! - [`schema`]: the `vpn_users` entity and its migrations.
//! - [`store`]: [`UserStore`], every query and transaction.
//! - [`cache`]: [`UserCache`], cache-aside through the Cache service.
//! - [`idempotency`]: [`IdempotencyKey`], `request_id`s that make batch writes safe to retry.
//! - [`directory`]: [`UserDirectory`], limits + cache + store: the operations.
//! - [`config`]: [`VpnUsersConfig`], the service's settings.
//! - [`error`]: [`VpnUsersError`] with its reason and offending field.
//! - [`grpc`]: [`VpnUsersGrpc`], the `mesh.vpnusers.v1.VpnUsers` adapter.

#![forbid(unsafe_code)]
// Product names (SQLite, PostgreSQL, WireGuard, VpnUsers) are prose in these docs, not code.
#![allow(clippy::doc_markdown)]

pub mod cache;
pub mod config;
pub mod directory;
pub mod error;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod idempotency;
pub mod model;
pub mod page_token;
pub mod schema;
pub mod search;
pub mod store;

use std::time::Duration;

pub use cache::{CacheSettings, CacheUsage, UserCache};
pub use config::{DatabaseLocation, DatabaseUrl, VpnUsersConfig};
pub use directory::UserDirectory;
pub use error::VpnUsersError;
pub use filter::{UserFilter, UserSort};
pub use grpc::VpnUsersGrpc;
pub use idempotency::{IdempotencyKey, Written};
use mesh_kit::{ConfigWatch, MeshServer, Runtime, ServeError};
use mesh_proto::vpnusers::v1::FILE_DESCRIPTOR_SET;
use mesh_proto::vpnusers::v1::vpn_users_server::VpnUsersServer;
pub use model::{NewUser, User, UserPatch, UserStatus, VpnProtocol};
pub use store::{BatchMode, UserStore};
use tracing::info;

/// How often the config file is checked for changes.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the VpnUsers service until `rt.shutdown` is cancelled: opens (and
/// migrates) the database, connects the cache if one is configured, and serves.
pub async fn run(rt: Runtime) -> Result<(), ServeError> {
    let source = config::with_aliases(&rt.config_source);
    let config: ConfigWatch<VpnUsersConfig> =
        mesh_kit::config::load_and_watch(source, CONFIG_POLL_INTERVAL, rt.shutdown.clone())?;
    let settings = config.borrow().clone();
    let directory = open_directory(&settings, config).await?;

    let server = MeshServer::new(rt.server_settings);
    let max_message_bytes = server.settings().max_message_bytes;
    let service = VpnUsersServer::new(VpnUsersGrpc::new(directory))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    server.add_service(service, FILE_DESCRIPTOR_SET).serve(rt.listener, rt.shutdown).await
}

/// The store and, when configured, the cache, as `run` builds them.
pub async fn open_directory(
    settings: &VpnUsersConfig,
    config: ConfigWatch<VpnUsersConfig>,
) -> Result<UserDirectory, ServeError> {
    let location = settings.database_location();
    let store = UserStore::open(&location, settings.max_connections, settings.connect_timeout)
        .await
        .map_err(|error| {
            let place = match &location {
                DatabaseLocation::SqliteFile(path) => path.display().to_string(),
                DatabaseLocation::Url(url) => url.redacted(),
            };
            // `ServeError` has no variant for a service's own start-up failure;
            // `Io` carries it with its cause chain.
            ServeError::Io(std::io::Error::other(StartupError { place, source: error }))
        })?
        .with_postgres_synchronous_commit(settings.postgres_synchronous_commit);
    let cache = if let Some(endpoint) = settings.cache_endpoint() {
        let cache_settings = CacheSettings {
            ttl: settings.cache_ttl,
            call_timeout: settings.cache_timeout,
            retry_after: settings.cache_retry_after,
        };
        info!(endpoint, "users are read through the cache service");
        Some(UserCache::connect(endpoint, cache_settings)?)
    } else {
        info!("no cache endpoint configured; users are read from the database only");
        None
    };
    Ok(UserDirectory::new(store, cache, config))
}

/// The database could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the vpnusers database at {place}: {source}")]
struct StartupError {
    /// The file, or the URL without its password.
    place: String,
    source: VpnUsersError,
}
