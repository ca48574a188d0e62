//! `UserDirectory`: the service's operations, in domain terms. It enforces the
//! configured limits (batch sizes, page sizes), reads through the cache when
//! one is configured, and invalidates it after writes. Storage is
//! [`UserStore`]; the cache is [`UserCache`]; the wire is `grpc`'s business.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_kit::ConfigWatch;
use uuid::Uuid;

use crate::cache::{CacheUsage, UserCache};
use crate::config::VpnUsersConfig;
use crate::error::VpnUsersError;
use crate::filter::UserFilter;
use crate::idempotency::{IdempotencyClaim, IdempotencyKey, Written};
use crate::model::{NewUser, User, UserPatch, UserStatus};
use crate::store::{
    BatchMode, ItemOutcome, ListPage, ListQuery, SearchPage, SetStatusOutcome, StatusSelector, UserStats, UserStore,
};

/// Chunk size of an export when the caller asks for 0.
pub const DEFAULT_EXPORT_CHUNK_SIZE: u32 = 500;
/// Sign-up days reported when the caller asks for 0.
pub const DEFAULT_SIGNUP_DAYS: u32 = 30;
/// Most sign-up days one call may ask for.
pub const MAX_SIGNUP_DAYS: u32 = 366;

/// The users, their cache and the live limits.
#[derive(Debug, Clone)]
pub struct UserDirectory {
    store: UserStore,
    cache: Option<Arc<UserCache>>,
    config: ConfigWatch<VpnUsersConfig>,
}

impl UserDirectory {
    /// Serves `store`, through `cache` when given, within `config`'s limits.
    #[must_use]
    pub fn new(store: UserStore, cache: Option<UserCache>, config: ConfigWatch<VpnUsersConfig>) -> Self {
        Self { store, cache: cache.map(Arc::new), config }
    }

    /// The store underneath.
    #[must_use]
    pub fn store(&self) -> &UserStore {
        &self.store
    }

    /// Whether reads go through a cache, and its counters.
    #[must_use]
    pub fn cache_usage(&self) -> Option<CacheUsage> {
        self.cache.as_ref().map(|cache| cache.usage())
    }

    fn settings(&self) -> Arc<VpnUsersConfig> {
        self.config.borrow().clone()
    }

    fn check_batch(&self, field: &'static str, count: usize) -> Result<(), VpnUsersError> {
        let max = self.settings().max_batch_size;
        if count > max {
            return Err(VpnUsersError::BatchTooLarge { field, count, max });
        }
        Ok(())
    }

    /// Resolves a requested page size: 0 is the default; negative or above
    /// the maximum is refused, naming the maximum.
    pub fn page_size(&self, field: &'static str, requested: i32, default: u32) -> Result<u32, VpnUsersError> {
        let max = self.settings().max_page_size;
        match u32::try_from(requested) {
            Ok(0) => Ok(default.min(max)),
            Ok(size) if size <= max => Ok(size),
            _ => Err(VpnUsersError::InvalidPageSize { field, requested: i64::from(requested), max }),
        }
    }

    /// Creates users; see [`UserStore::create_users`].
    pub async fn create_users(
        &self,
        users: Vec<NewUser>,
        mode: BatchMode,
    ) -> Result<Vec<ItemOutcome<User>>, VpnUsersError> {
        self.check_batch("users", users.len())?;
        // Nothing to invalidate: users are cached only once read, and new ids
        // were never read.
        self.store.create_users(users, mode).await
    }

    /// Creates users under an idempotency key: a retry of the same request
    /// gets the stored response of the first; see [`UserStore::create_users_keyed`].
    pub async fn create_users_keyed<R>(
        &self,
        users: Vec<NewUser>,
        mode: BatchMode,
        key: &IdempotencyKey,
        respond: impl FnOnce(Vec<ItemOutcome<User>>) -> (R, Vec<u8>),
    ) -> Result<Written<R>, VpnUsersError> {
        self.check_batch("users", users.len())?;
        self.store.create_users_keyed(users, mode, self.claim(key), respond).await
    }

    /// The key with its expiry from now.
    fn claim<'a>(&self, key: &'a IdempotencyKey) -> IdempotencyClaim<'a> {
        let ttl_micros = i64::try_from(self.settings().idempotency_ttl.as_micros()).unwrap_or(i64::MAX);
        IdempotencyClaim { key, expires_at_micros: crate::model::now_micros().saturating_add(ttl_micros) }
    }

    /// Updates users, then drops their cached copies.
    pub async fn update_users(
        &self,
        updates: Vec<(Uuid, UserPatch)>,
        mode: BatchMode,
    ) -> Result<Vec<ItemOutcome<User>>, VpnUsersError> {
        self.check_batch("updates", updates.len())?;
        let outcomes = self.store.update_users(updates, mode).await?;
        if let Some(cache) = &self.cache {
            let changed: Vec<Uuid> = outcomes.iter().filter_map(|outcome| Some(outcome.as_ref().ok()?.id)).collect();
            cache.invalidate_users(&changed).await;
        }
        Ok(outcomes)
    }

    /// Updates users under an idempotency key, then drops the cached copies
    /// of the users it changed (nothing, when the response is a replay).
    pub async fn update_users_keyed<R>(
        &self,
        updates: Vec<(Uuid, UserPatch)>,
        mode: BatchMode,
        key: &IdempotencyKey,
        respond: impl FnOnce(Vec<ItemOutcome<User>>) -> (R, Vec<u8>),
    ) -> Result<Written<R>, VpnUsersError> {
        self.check_batch("updates", updates.len())?;
        let mut changed: Vec<Uuid> = Vec::new();
        let written = self
            .store
            .update_users_keyed(updates, mode, self.claim(key), |outcomes| {
                changed = outcomes.iter().filter_map(|outcome| Some(outcome.as_ref().ok()?.id)).collect();
                respond(outcomes)
            })
            .await?;
        if let Some(cache) = &self.cache {
            cache.invalidate_users(&changed).await;
        }
        Ok(written)
    }

    /// Deletes users, then drops their cached copies.
    pub async fn delete_users(&self, ids: Vec<Uuid>, mode: BatchMode) -> Result<Vec<ItemOutcome<Uuid>>, VpnUsersError> {
        self.check_batch("ids", ids.len())?;
        let outcomes = self.store.delete_users(ids, mode).await?;
        if let Some(cache) = &self.cache {
            let deleted: Vec<Uuid> = outcomes.iter().filter_map(|outcome| outcome.as_ref().ok().copied()).collect();
            cache.invalidate_users(&deleted).await;
        }
        Ok(outcomes)
    }

    /// Deletes users under an idempotency key, then drops the cached copies
    /// of the users it deleted (nothing, when the response is a replay).
    pub async fn delete_users_keyed<R>(
        &self,
        ids: Vec<Uuid>,
        mode: BatchMode,
        key: &IdempotencyKey,
        respond: impl FnOnce(Vec<ItemOutcome<Uuid>>) -> (R, Vec<u8>),
    ) -> Result<Written<R>, VpnUsersError> {
        self.check_batch("ids", ids.len())?;
        let mut deleted: Vec<Uuid> = Vec::new();
        let written = self
            .store
            .delete_users_keyed(ids, mode, self.claim(key), |outcomes| {
                deleted = outcomes.iter().filter_map(|outcome| outcome.as_ref().ok().copied()).collect();
                respond(outcomes)
            })
            .await?;
        if let Some(cache) = &self.cache {
            cache.invalidate_users(&deleted).await;
        }
        Ok(written)
    }

    /// Reads users by id, cache first, one result per id in order.
    pub async fn get_users(&self, ids: &[Uuid], mode: BatchMode) -> Result<Vec<ItemOutcome<User>>, VpnUsersError> {
        self.check_batch("ids", ids.len())?;
        let found = self.read_through(ids).await?;
        let mut outcomes: Vec<ItemOutcome<User>> =
            ids.iter().map(|id| found.get(id).cloned().ok_or(VpnUsersError::UserNotFound { id: *id })).collect();
        if mode == BatchMode::AllOrNothing
            && let Some(index) = outcomes.iter().position(Result::is_err)
        {
            let source = outcomes.swap_remove(index).expect_err("position found an error");
            return Err(VpnUsersError::BatchItemFailed { index, source: Box::new(source) });
        }
        Ok(outcomes)
    }

    /// Reads one user, cache first.
    pub async fn get_user(&self, id: Uuid) -> Result<User, VpnUsersError> {
        let mut found = self.read_through(&[id]).await?;
        found.remove(&id).ok_or(VpnUsersError::UserNotFound { id })
    }

    /// Cache-aside: cached users, then the database for the rest, which are
    /// then cached.
    async fn read_through(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, User>, VpnUsersError> {
        let Some(cache) = &self.cache else {
            return self.store.get_users(ids).await;
        };
        let mut found = cache.get_many(ids).await;
        let missing: Vec<Uuid> = ids.iter().filter(|id| !found.contains_key(id)).copied().collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let loaded = self.store.get_users(&missing).await?;
        cache.put_many(&loaded.values().collect::<Vec<_>>()).await;
        found.extend(loaded);
        Ok(found)
    }

    /// One page of a list; see [`UserStore::list_users`].
    pub async fn list_users(&self, query: &ListQuery) -> Result<ListPage, VpnUsersError> {
        self.store.list_users(query).await
    }

    /// One page of search hits; see [`UserStore::search_users`].
    pub async fn search_users(
        &self,
        query_text: &str,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<SearchPage, VpnUsersError> {
        self.store.search_users(query_text, page_size, page_token).await
    }

    /// Aggregates; `signup_days` 0 means [`DEFAULT_SIGNUP_DAYS`].
    pub async fn stats(&self, signup_days: i32) -> Result<UserStats, VpnUsersError> {
        let days = match u32::try_from(signup_days) {
            Ok(0) => DEFAULT_SIGNUP_DAYS,
            Ok(days) if days <= MAX_SIGNUP_DAYS => days,
            _ => return Err(VpnUsersError::InvalidSignupDays { requested: i64::from(signup_days) }),
        };
        self.store.stats(days, crate::model::now_micros()).await
    }

    /// Sets a status in bulk, then drops the cached copies it changed.
    pub async fn set_status(
        &self,
        status: UserStatus,
        selector: &StatusSelector,
    ) -> Result<SetStatusOutcome, VpnUsersError> {
        if let StatusSelector::Ids(ids) = selector {
            let max = self.settings().max_bulk_ids;
            if ids.len() > max {
                return Err(VpnUsersError::BatchTooLarge { field: "ids.ids", count: ids.len(), max });
            }
        }
        let outcome = self.store.set_status(status, selector).await?;
        if let Some(cache) = &self.cache {
            match selector {
                StatusSelector::Ids(_) => cache.invalidate_users(&outcome.changed_ids).await,
                StatusSelector::Filter(_) => cache.invalidate_all_users().await,
            }
        }
        Ok(outcome)
    }

    /// Validates an export's filter and resolves its chunk size.
    pub fn export_chunk_size(&self, filter: &UserFilter, requested: i32) -> Result<u32, VpnUsersError> {
        filter.validate()?;
        self.page_size("chunk_size", requested, DEFAULT_EXPORT_CHUNK_SIZE)
    }

    /// One chunk of an export; see [`UserStore::export_chunk`].
    pub async fn export_chunk(
        &self,
        filter: &UserFilter,
        after: Option<Uuid>,
        chunk_size: u32,
    ) -> Result<Vec<User>, VpnUsersError> {
        self.store.export_chunk(filter, after, chunk_size).await
    }

    /// The default page size now.
    #[must_use]
    pub fn default_page_size(&self) -> u32 {
        self.settings().default_page_size
    }
}
