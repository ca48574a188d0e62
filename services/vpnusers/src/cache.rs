//! `UserCache`: cache-aside for users through the Cache service over gRPC.
//!
//! A user is cached under `vpnusers:user:<id>` as JSON with the tags
//! `user:<id>` and `users`, for `cache_ttl`. Writes invalidate by tag:
//! `user:<id>` for the users they changed, `users` when a bulk change by
//! filter touched users it cannot name.
//!
//! The cache is an optimisation, never a dependency: every call is bounded by
//! `cache_timeout`, and a failure makes reads skip the cache for
//! `cache_retry_after` and go to the database, so a dead Cache service costs
//! one timeout per period rather than one per read. Failures are counted in
//! [`CacheUsage`] and logged once when the cache goes away and once when it
//! comes back. Invalidations are always attempted, because a missed one
//! leaves a stale user for up to `cache_ttl`.
//!
//! A read racing a write can still put the old value back after the write's
//! invalidation; `cache_ttl` bounds how long it lives.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_kit::client::{self, MeshChannel};
use mesh_proto::cache::v1 as cache_pb;
use mesh_proto::cache::v1::cache_client::CacheClient;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::model::User;

/// The tag every cached user carries.
pub const ALL_USERS_TAG: &str = "users";
/// Most keys or tags sent in one cache call: the Cache service's default
/// `max_batch_size`, so a SetStatus of 1000 users is one invalidation call.
const MAX_KEYS_PER_CALL: usize = 1000;
/// How long connecting to the Cache service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The cache key of a user.
#[must_use]
pub fn user_key(id: Uuid) -> String {
    format!("vpnusers:user:{id}")
}

/// The tag of one user's entries.
#[must_use]
pub fn user_tag(id: Uuid) -> String {
    format!("user:{id}")
}

/// How a `UserCache` behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// Lifetime of a cached user.
    pub ttl: Duration,
    /// Longest a cache call may take.
    pub call_timeout: Duration,
    /// How long reads skip the cache after a failure.
    pub retry_after: Duration,
}

/// Counters of the cache-aside path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Users served from the cache.
    pub hits: u64,
    /// Users read from the database, then cached.
    pub misses: u64,
    /// Cache calls that failed or were skipped because the cache was down.
    pub failures: u64,
}

/// Cache-aside over the Cache service; see the module docs.
#[derive(Debug)]
pub struct UserCache {
    client: CacheClient<MeshChannel>,
    settings: CacheSettings,
    /// Reads skip the cache until this instant, after a failure.
    skip_until: Mutex<Option<Instant>>,
    /// Whether the last call failed, so the outage is logged once.
    is_down: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    failures: AtomicU64,
}

/// Why a cache call did not complete.
#[derive(Debug, thiserror::Error)]
enum CacheCallError {
    #[error("cache call timed out")]
    Timeout,
    #[error("cache call failed: {0}")]
    Status(#[from] tonic::Status),
}

impl UserCache {
    /// A cache client for `endpoint` (`http://host:port`); connects on first use.
    pub fn connect(endpoint: &str, settings: CacheSettings) -> Result<Self, tonic::transport::Error> {
        let channel =
            client::connect_lazy(endpoint, CONNECT_TIMEOUT.min(settings.call_timeout.max(Duration::from_millis(100))))?;
        Ok(Self {
            client: CacheClient::new(channel),
            settings,
            skip_until: Mutex::new(None),
            is_down: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The counters so far.
    #[must_use]
    pub fn usage(&self) -> CacheUsage {
        CacheUsage {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// The cached users among `ids`; an unreachable cache returns none.
    pub async fn get_many(&self, ids: &[Uuid]) -> HashMap<Uuid, User> {
        let mut found = HashMap::new();
        if ids.is_empty() {
            return found;
        }
        if self.is_skipping() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return found;
        }
        for chunk in ids.chunks(MAX_KEYS_PER_CALL) {
            let request = cache_pb::GetManyRequest { keys: chunk.iter().map(|id| user_key(*id)).collect() };
            let mut client = self.client.clone();
            let Some(response) = self.call("get_many", client.get_many(request)).await else {
                return found;
            };
            for entry in response.entries.into_iter().filter(|entry| entry.found) {
                match serde_json::from_slice::<User>(&entry.value) {
                    Ok(user) => {
                        found.insert(user.id, user);
                    }
                    // An entry this version cannot read is a miss; the
                    // database answers and the fill overwrites it.
                    Err(error) => debug!(key = %entry.key, %error, "unreadable cache entry"),
                }
            }
        }
        self.hits.fetch_add(found.len() as u64, Ordering::Relaxed);
        found
    }

    /// Caches users just read from the database.
    pub async fn put_many(&self, users: &[&User]) {
        if users.is_empty() {
            return;
        }
        self.misses.fetch_add(users.len() as u64, Ordering::Relaxed);
        if self.is_skipping() {
            return;
        }
        let ttl = prost_types::Duration::try_from(self.settings.ttl).ok();
        for chunk in users.chunks(MAX_KEYS_PER_CALL) {
            let entries = chunk
                .iter()
                .map(|user| cache_pb::CacheEntry {
                    key: user_key(user.id),
                    value: serde_json::to_vec(user).expect("users serialize to JSON"),
                    ttl,
                    tags: vec![user_tag(user.id), ALL_USERS_TAG.to_owned()],
                })
                .collect();
            let mut client = self.client.clone();
            if self.call("set_many", client.set_many(cache_pb::SetManyRequest { entries })).await.is_none() {
                return;
            }
        }
    }

    /// Drops the cached entries of these users.
    pub async fn invalidate_users(&self, ids: &[Uuid]) {
        for chunk in ids.chunks(MAX_KEYS_PER_CALL) {
            let tags = chunk.iter().map(|id| user_tag(*id)).collect();
            let mut client = self.client.clone();
            if self
                .call("invalidate_tags", client.invalidate_tags(cache_pb::InvalidateTagsRequest { tags }))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// Drops every cached user.
    pub async fn invalidate_all_users(&self) {
        let request = cache_pb::InvalidateTagsRequest { tags: vec![ALL_USERS_TAG.to_owned()] };
        let mut client = self.client.clone();
        let _ = self.call("invalidate_tags", client.invalidate_tags(request)).await;
    }

    fn is_skipping(&self) -> bool {
        let skip_until = self.skip_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        skip_until.is_some_and(|until| Instant::now() < until)
    }

    /// Runs one cache call under `call_timeout`; `None` when it failed, which
    /// is counted, logged on the first failure, and starts a skip period.
    async fn call<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Option<T> {
        let result = match tokio::time::timeout(self.settings.call_timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(CacheCallError::Status(status)),
            Err(_elapsed) => Err(CacheCallError::Timeout),
        };
        match result {
            Ok(response) => {
                if self.is_down.swap(false, Ordering::Relaxed) {
                    info!(method, "cache service reachable again; reads use it");
                }
                Some(response)
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                *self.skip_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now() + self.settings.retry_after);
                if self.is_down.swap(true, Ordering::Relaxed) {
                    debug!(method, %error, "cache call failed");
                } else {
                    warn!(method, %error, retry_after = ?self.settings.retry_after, "cache service unavailable; serving from the database");
                }
                None
            }
        }
    }
}
