//! The Cache service: TTL, tag and pattern invalidation, LRU-approximating
//! eviction under a byte budget, and single-flight leases for cache-aside reads.
//! The domain modules are plain Rust; `grpc` adapts them to `mesh.cache.v1`.
//! Server setup, config loading and telemetry live in `mesh-kit`.
//!
//! # Layout
//! - [`store`]: [`CacheStore`], plain Rust, no tonic or proto types.
//! - [`pattern`]: [`KeyPattern`], glob and bounded regex key matchers.
//! - [`lease`]: [`LeaseTable`], single-flight leases over the store.
//! - [`health`]: healthy or degraded, and why.
//! - [`config`]: [`CacheConfig`], the service's settings.
//! - [`error`]: [`CacheError`] with its reason and offending field.
//! - [`grpc`]: [`CacheGrpc`], the `mesh.cache.v1.Cache` adapter.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod grpc;
pub mod health;
pub mod lease;
pub mod pattern;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::CacheConfig;
pub use error::CacheError;
pub use grpc::CacheGrpc;
pub use lease::{LeaseOutcome, LeaseTable};
use mesh_kit::{CancellationToken, ConfigWatch, MeshServer, Runtime, ServeError};
use mesh_proto::cache::v1::FILE_DESCRIPTOR_SET;
use mesh_proto::cache::v1::cache_server::CacheServer;
pub use pattern::KeyPattern;
pub use store::{CacheStore, CachedValue, StoreLimits, StoreStats};
use tracing::{debug, info};

/// How often the config file is checked for changes.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the Cache service until `rt.shutdown` is cancelled.
pub async fn run(rt: Runtime) -> Result<(), ServeError> {
    let config: ConfigWatch<CacheConfig> =
        mesh_kit::config::load_and_watch(rt.config_source.clone(), CONFIG_POLL_INTERVAL, rt.shutdown.clone())?;
    let (store, leases) = {
        let settings = config.borrow();
        info!(
            memory_budget_bytes = settings.memory_budget_bytes(),
            max_entries = settings.max_size,
            "cache store ready"
        );
        (Arc::new(CacheStore::new(settings.store_limits())), Arc::new(LeaseTable::new(settings.max_leases)))
    };
    tokio::spawn(sweep_expired(store.clone(), leases.clone(), config.clone(), rt.shutdown.clone()));

    let server = MeshServer::new(rt.server_settings);
    let max_message_bytes = server.settings().max_message_bytes;
    let service = CacheServer::new(CacheGrpc::new(store, leases, config))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    server.add_service(service, FILE_DESCRIPTOR_SET).serve(rt.listener, rt.shutdown).await
}

/// Removes expired entries and leases every `cleanup_interval` (re-read
/// after each sweep, so a reload takes effect at the next one).
async fn sweep_expired(
    store: Arc<CacheStore>,
    leases: Arc<LeaseTable>,
    config: ConfigWatch<CacheConfig>,
    shutdown: CancellationToken,
) {
    loop {
        let interval = config.borrow().cleanup_interval;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let sweep_store = store.clone();
        // A sweep is O(expired entries); keep it off the async workers.
        let expired = tokio::task::spawn_blocking(move || sweep_store.sweep_expired(Instant::now())).await;
        let expired_leases = leases.purge_expired(Instant::now());
        debug!(expired_entries = expired.unwrap_or_default(), expired_leases, "swept expired entries");
    }
}
