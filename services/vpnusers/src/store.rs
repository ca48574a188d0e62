//! `UserStore`: users in SQLite or PostgreSQL through sea-orm. Plain Rust:
//! no tonic, no proto, no cache. Every batch is one transaction, every bulk
//! change one statement, and every value reaches the database as a bound
//! parameter.
//!
//! Durability: PostgreSQL commits wait for their WAL flush (the server's
//! `synchronous_commit = on`) unless `postgres_synchronous_commit` is turned
//! off, which trades the last moments of acknowledged commits on a power loss
//! for not waiting for an fsync. SQLite runs in WAL mode with `synchronous =
//! NORMAL` (the kit's setting for every service): a commit survives a crash of
//! the process, not a power loss, and a background task copies the WAL into
//! the database so no commit checkpoints.
//!
//! Writes on SQLite go through a pool of one connection (see
//! [`UserStore::open`]) and start with `BEGIN IMMEDIATE`, so a batch that reads
//! before it writes (an update checks usernames) holds the write lock first
//! instead of failing with `SQLITE_BUSY` halfway through; PostgreSQL locks the
//! rows it reads with `FOR UPDATE`.
//!
//! Sets of values go to PostgreSQL as arrays: a batch insert is one `INSERT ..
//! SELECT FROM UNNEST(..)` of a column per array and a set of ids is `= ANY($1)`,
//! so the statement text, and the plan the server caches for it, is the same for
//! every batch size. SQLite binds each value, in statements of at most
//! [`SQLITE_MAX_ROWS_PER_INSERT`] rows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use mesh_kit::CancellationToken;
use sea_orm::sea_query::extension::postgres::PgFunc;
use sea_orm::sea_query::{
    Alias, ArrayType, Expr, ExprTrait, LockType, OnConflict, Order, Query, SelectStatement, SimpleExpr, UpdateStatement,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, FromQueryResult, IdenStatic, Iterable,
    SqlErr, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};
use sea_orm_migration::MigratorTrait;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use uuid::Uuid;

use crate::config::DatabaseLocation;
use crate::error::VpnUsersError;
use crate::filter::{SortDirection, SortField, UserFilter, UserSort};
use crate::idempotency::{IdempotencyClaim, Written};
use crate::model::{NewUser, User, UserPatch, UserStatus, VpnProtocol};
use crate::page_token::PageTokenKey;
use crate::schema::{Migrator, VpnUsersIdempotency, service_meta, vpn_user};
use crate::search;

/// Microseconds in a day, for sign-ups per day.
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// The stored expiry of a user that never expires; see `schema`.
const NEVER_EXPIRES: i64 = i64::MAX;
/// Rows written before the first `ANALYZE` after opening; the gap doubles
/// after each one, up to [`MAX_ANALYZE_GAP_ROWS`], so a growing table is
/// analysed O(log n) times. Both planners need these statistics to prefer a
/// sort index over an equality on a low-cardinality column (on SQLite a
/// filtered list at 100k users drops from ~50 ms to ~1 ms once analysed).
const FIRST_ANALYZE_GAP_ROWS: u64 = 1_000;
/// Most rows written between two `ANALYZE`s.
const MAX_ANALYZE_GAP_ROWS: u64 = 1_000_000;
/// How often the SQLite checkpointer copies the WAL into the database file.
/// Commits never checkpoint (see [`UserStore::begin_write`]): with SQLite's
/// default, the commit that grew the WAL past 1000 pages copied and fsynced
/// it, and a bulk status change of 1000 scattered users (some 1500 pages)
/// paid that every time.
const SQLITE_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
/// Least time between two deletions of expired idempotency keys: one minute.
const KEY_PURGE_INTERVAL_MICROS: i64 = 60_000_000;
/// The name of the page token key in `vpn_users_meta`.
const PAGE_TOKEN_KEY_NAME: &str = "page_token_key";
/// Most parameters in one SQLite statement (`SQLITE_MAX_VARIABLE_NUMBER`
/// since 3.32).
const SQLITE_MAX_VARIABLES: usize = 32_766;
/// Most users in one SQLite `INSERT`: `max_batch_size` may be up to 10,000,
/// and 12 values a user would pass the variable limit above 2,730 users.
const SQLITE_MAX_ROWS_PER_INSERT: usize = SQLITE_MAX_VARIABLES / WRITTEN_COLUMNS.len();

/// How a batch treats a failing item.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchMode {
    /// A failing item refuses the batch and nothing is written.
    #[default]
    AllOrNothing,
    /// Good items are written; failing items report their own error.
    PerItem,
}

/// One item's outcome in a batch.
pub type ItemOutcome<T> = Result<T, VpnUsersError>;

/// A list request, already validated by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Which users.
    pub filter: UserFilter,
    /// Their order.
    pub sort: UserSort,
    /// Users per page, at least 1.
    pub page_size: u32,
    /// A token from a previous page, or none for the first (or a jumped-to) page.
    pub page_token: Option<String>,
    /// The 1-based page to jump to when there is no token.
    pub page_number: u32,
    /// Whether to count every matching user.
    pub include_total_size: bool,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// The users of this page.
    pub users: Vec<User>,
    /// The token of the next page; `None` on the last one.
    pub next_page_token: Option<String>,
    /// This page's 1-based number.
    pub page_number: u32,
    /// Every matching user, when asked for.
    pub total_size: Option<u64>,
}

/// A search hit.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchHit {
    /// The user.
    pub user: User,
    /// Relevance, higher is better.
    pub score: f64,
}

/// One page of search hits.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchPage {
    /// Hits, best first.
    pub hits: Vec<SearchHit>,
    /// The token of the next page; `None` on the last one.
    pub next_page_token: Option<String>,
}

/// Aggregates over every user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserStats {
    /// All users.
    pub total_users: u64,
    /// Users per status, statuses without users left out.
    pub by_status: Vec<(UserStatus, u64)>,
    /// Users per protocol, protocols without users left out.
    pub by_protocol: Vec<(VpnProtocol, u64)>,
    /// Sum of traffic used.
    pub traffic_used_total_bytes: u64,
    /// Sum of traffic limits (0, unlimited, adds nothing).
    pub traffic_limit_total_bytes: u64,
    /// Users with a limit whose traffic reached it.
    pub over_limit_users: u64,
    /// `(day start in Unix micros, sign-ups)`, oldest first, every day present.
    pub signups_per_day: Vec<(i64, u64)>,
}

/// The users a bulk status change covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusSelector {
    /// These ids.
    Ids(Vec<Uuid>),
    /// Every user matching a non-empty filter.
    Filter(Box<UserFilter>),
}

/// What a bulk status change did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetStatusOutcome {
    /// Users whose status was set.
    pub affected_count: u64,
    /// Ids that name no user (selector `Ids` only).
    pub not_found_ids: Vec<Uuid>,
    /// The ids changed, when the selector named ids.
    pub changed_ids: Vec<Uuid>,
}

/// Where a list page starts: after a row, or after skipping rows.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ListCursor {
    /// The 1-based number of the page this cursor opens.
    page: u32,
    /// The sort value of the previous page's last row.
    key: SortKey,
    /// The id of the previous page's last row.
    id: Uuid,
}

/// A sort column's value in a cursor.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum SortKey {
    Integer(i64),
    Text(String),
}

/// Where a search page starts.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SearchCursor {
    /// Hits to skip.
    offset: u64,
}

/// Users in a SQL database.
#[derive(Clone, Debug)]
pub struct UserStore {
    /// Reads, and on PostgreSQL writes too.
    db: DatabaseConnection,
    /// Write transactions: on SQLite a pool of its own with one connection,
    /// on PostgreSQL the same pool as `db`.
    writer: DatabaseConnection,
    page_token_key: PageTokenKey,
    /// Rows written since the last `ANALYZE`, shared by every clone.
    rows_since_analyze: Arc<AtomicU64>,
    /// Rows to write before the next `ANALYZE`.
    analyze_gap_rows: Arc<AtomicU64>,
    /// When expired idempotency keys are next deleted, in Unix microseconds.
    next_key_purge_micros: Arc<AtomicI64>,
    /// Whether a PostgreSQL commit waits for its WAL flush.
    postgres_synchronous_commit: bool,
    /// Stops the SQLite checkpointer when the last clone is dropped.
    _checkpointer: Option<Arc<StopOnDrop>>,
}

/// Cancels its token when dropped.
#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

// === impl UserStore: opening ===

impl UserStore {
    /// Connects (creating the SQLite file and its directory if needed),
    /// applies pending migrations and loads the page token key.
    pub async fn open(
        location: &DatabaseLocation,
        max_connections: u32,
        connect_timeout: Duration,
    ) -> Result<Self, VpnUsersError> {
        let pool = mesh_kit::database::PoolSettings {
            max_connections,
            connect_timeout,
            // 32 MiB of page cache per connection (the default is 2 MiB):
            // the table and its indexes at 100k users stay in memory.
            sqlite_cache_kib: 32 * 1024,
        };
        let db = mesh_kit::database::connect(location, pool).await?;
        Migrator::up(&db, None).await?;
        let page_token_key = load_or_create_page_token_key(&db).await?;
        db.execute_unprepared("ANALYZE vpn_users").await?;
        // SQLite has one writer at a time. Writers waiting in a pool of one
        // connection queue in order, where several connections would collide
        // on the write lock and sleep in SQLite's busy handler (1 ms, 2 ms, ..,
        // 100 ms); and that connection's page cache stays warm, because SQLite
        // empties a connection's cache when another connection wrote since
        // its last transaction. An in-memory database is private to its
        // connection, so it keeps a single pool.
        let writer = if db.get_database_backend() == DbBackend::Sqlite && !is_sqlite_in_memory(location) {
            let writer_pool = mesh_kit::database::PoolSettings { max_connections: 1, ..pool };
            mesh_kit::database::connect(location, writer_pool).await?
        } else {
            db.clone()
        };
        let checkpointer = (db.get_database_backend() == DbBackend::Sqlite).then(|| spawn_checkpointer(db.clone()));
        info!(backend = ?db.get_database_backend(), "user store ready");
        Ok(Self {
            db,
            writer,
            page_token_key,
            rows_since_analyze: Arc::new(AtomicU64::new(0)),
            analyze_gap_rows: Arc::new(AtomicU64::new(FIRST_ANALYZE_GAP_ROWS)),
            next_key_purge_micros: Arc::new(AtomicI64::new(0)),
            postgres_synchronous_commit: true,
            _checkpointer: checkpointer,
        })
    }

    /// Whether a PostgreSQL commit waits until its WAL is flushed to disk
    /// (`synchronous_commit`); on by default. See
    /// [`VpnUsersConfig::postgres_synchronous_commit`](crate::VpnUsersConfig::postgres_synchronous_commit).
    #[must_use]
    pub fn with_postgres_synchronous_commit(mut self, synchronous_commit: bool) -> Self {
        self.postgres_synchronous_commit = synchronous_commit;
        self
    }

    /// Counts written rows and, once the gap is reached, refreshes the
    /// planner statistics in the background (a full `ANALYZE`: SQLite's
    /// sampled one misjudges low-cardinality columns).
    fn note_rows_written(&self, count: u64) {
        let before = self.rows_since_analyze.fetch_add(count, Ordering::Relaxed);
        let gap = self.analyze_gap_rows.load(Ordering::Relaxed);
        if before + count < gap {
            return;
        }
        self.rows_since_analyze.store(0, Ordering::Relaxed);
        self.analyze_gap_rows.store(std::cmp::min(gap * 2, MAX_ANALYZE_GAP_ROWS), Ordering::Relaxed);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(error) = store.analyze().await {
                debug!(%error, "analyze failed; the planner keeps its old statistics");
            }
        });
    }

    /// Which database this is.
    #[must_use]
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// The connection, for benchmarks and tests that prepare data.
    #[must_use]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Refreshes the planner statistics of `vpn_users`. On SQLite it runs in
    /// an IMMEDIATE transaction: ANALYZE reads, then writes its statistics,
    /// and a deferred one fails with `SQLITE_BUSY` when a batch commits in
    /// between.
    async fn analyze(&self) -> Result<(), DbErr> {
        let transaction = self.begin_write().await?;
        transaction.execute_unprepared("ANALYZE vpn_users").await?;
        transaction.commit().await
    }

    async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        let transaction = self.writer.begin_with_options(options).await?;
        match self.backend() {
            // Per connection, and the writer's connection may be replaced by
            // the pool, so every write sets it; the checkpointer task does the
            // copying instead.
            DbBackend::Sqlite => {
                transaction.execute_unprepared("PRAGMA wal_autocheckpoint = 0").await?;
            }
            // Opted out of durable commits: a commit returns before the WAL
            // flush (an fsync of a few milliseconds), as SQLite's NORMAL does.
            DbBackend::Postgres if !self.postgres_synchronous_commit => {
                transaction.execute_unprepared("SET LOCAL synchronous_commit = off").await?;
            }
            _ => {}
        }
        Ok(transaction)
    }
}

/// Whether `location` is an SQLite database that lives in its connection's memory.
fn is_sqlite_in_memory(location: &DatabaseLocation) -> bool {
    match location {
        DatabaseLocation::SqliteFile(_) => false,
        DatabaseLocation::Url(url) => url.expose().contains(":memory:") || url.expose().contains("mode=memory"),
    }
}

/// Copies the SQLite WAL into the database every [`SQLITE_CHECKPOINT_INTERVAL`]
/// until the returned guard is dropped. PASSIVE never blocks writers or
/// readers; the next writer then restarts the WAL from its beginning.
fn spawn_checkpointer(db: DatabaseConnection) -> Arc<StopOnDrop> {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stopped.cancelled() => return,
                () = tokio::time::sleep(SQLITE_CHECKPOINT_INTERVAL) => {}
            }
            if let Err(error) = db.execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)").await {
                debug!(%error, "wal checkpoint failed; the next one retries");
            }
        }
    });
    Arc::new(StopOnDrop(stop))
}

/// Reads the signing key, creating it on first start. `ON CONFLICT DO
/// NOTHING` makes concurrent first starts agree on one key.
async fn load_or_create_page_token_key(db: &DatabaseConnection) -> Result<PageTokenKey, VpnUsersError> {
    let fresh_key = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let insert = Query::insert()
        .into_table(service_meta::Entity)
        .columns([service_meta::Column::Name, service_meta::Column::Value])
        .values_panic([PAGE_TOKEN_KEY_NAME.into(), fresh_key.into()])
        .on_conflict(OnConflict::column(service_meta::Column::Name).do_nothing().to_owned())
        .to_owned();
    db.execute(&insert).await?;
    let select = Query::select()
        .column(service_meta::Column::Value)
        .from(service_meta::Entity)
        .and_where(Expr::col(service_meta::Column::Name).eq(PAGE_TOKEN_KEY_NAME))
        .to_owned();
    let row = db
        .query_one(&select)
        .await?
        .ok_or_else(|| VpnUsersError::CorruptRow { reason: "page token key missing after insert".to_owned() })?;
    let key: String = row.try_get("", "value")?;
    Ok(PageTokenKey::new(key.into_bytes()))
}

// === impl UserStore: batches ===

/// A batch written in a transaction that is still open, or the stored
/// response of its idempotency key.
enum Attempt<T> {
    /// Written, not yet committed. No transaction when nothing was to be
    /// written and no key was to be claimed.
    Open { transaction: Option<DatabaseTransaction>, outcomes: Vec<ItemOutcome<T>>, rows_written: u64 },
    /// The key already answered this request.
    Replayed(Vec<u8>),
}

impl UserStore {
    /// Creates users in one transaction. Per item: invalid fields, a username
    /// repeated in the batch (the first one wins) or already taken.
    pub async fn create_users(
        &self,
        new_users: Vec<NewUser>,
        mode: BatchMode,
    ) -> Result<Vec<ItemOutcome<User>>, VpnUsersError> {
        let attempt = self.create_users_uncommitted(new_users, mode, None).await?;
        self.commit_unkeyed(attempt).await
    }

    /// [`Self::create_users`] under an idempotency key: `respond` turns the
    /// outcomes into the response and its encoding, which is stored with the
    /// key in the same transaction.
    pub async fn create_users_keyed<R>(
        &self,
        new_users: Vec<NewUser>,
        mode: BatchMode,
        claim: IdempotencyClaim<'_>,
        respond: impl FnOnce(Vec<ItemOutcome<User>>) -> (R, Vec<u8>),
    ) -> Result<Written<R>, VpnUsersError> {
        let attempt = self.create_users_uncommitted(new_users, mode, Some(claim)).await?;
        self.commit_keyed(attempt, claim, respond).await
    }

    async fn create_users_uncommitted(
        &self,
        new_users: Vec<NewUser>,
        mode: BatchMode,
        claim: Option<IdempotencyClaim<'_>>,
    ) -> Result<Attempt<User>, VpnUsersError> {
        let now = crate::model::now_micros();
        let mut seen_usernames = HashSet::with_capacity(new_users.len());
        let mut outcomes: Vec<ItemOutcome<User>> = Vec::with_capacity(new_users.len());
        for new_user in new_users {
            let outcome = new_user.validate().and_then(|()| {
                if seen_usernames.insert(new_user.username.clone()) {
                    Ok(new_user.into_user(Uuid::now_v7(), now))
                } else {
                    Err(VpnUsersError::DuplicateUsernameInBatch { username: new_user.username })
                }
            });
            outcomes.push(outcome);
        }
        refuse_if_any_failed(&mut outcomes, mode)?;
        let candidates: Vec<&User> = outcomes.iter().filter_map(|outcome| outcome.as_ref().ok()).collect();
        if candidates.is_empty() && claim.is_none() {
            return Ok(Attempt::Open { transaction: None, outcomes, rows_written: 0 });
        }

        let transaction = self.begin_write().await?;
        if let Some(claim) = claim
            && let Some(stored) = self.claim_key(&transaction, claim, now).await?
        {
            transaction.rollback().await?;
            return Ok(Attempt::Replayed(stored));
        }
        if candidates.is_empty() {
            return Ok(Attempt::Open { transaction: Some(transaction), outcomes, rows_written: 0 });
        }
        let mut inserted_ids = HashSet::with_capacity(candidates.len());
        for statement in insert_statements(self.backend(), &candidates) {
            for row in transaction.query_all_raw(statement).await? {
                inserted_ids.insert(row.try_get::<Uuid>("", "id")?);
            }
        }
        for outcome in &mut outcomes {
            if let Ok(user) = outcome
                && !inserted_ids.contains(&user.id)
            {
                *outcome = Err(VpnUsersError::UsernameTaken { username: user.username.clone() });
            }
        }
        if let Err(error) = refuse_if_any_failed(&mut outcomes, mode) {
            transaction.rollback().await?;
            return Err(error);
        }
        Ok(Attempt::Open { transaction: Some(transaction), outcomes, rows_written: inserted_ids.len() as u64 })
    }

    /// Applies patches in one transaction. Per item: invalid fields, a
    /// repeated id, an unknown id, or a username taken by another user
    /// (renaming users onto each other's names in one batch is refused too).
    pub async fn update_users(
        &self,
        updates: Vec<(Uuid, UserPatch)>,
        mode: BatchMode,
    ) -> Result<Vec<ItemOutcome<User>>, VpnUsersError> {
        let attempt = self.update_users_uncommitted(updates, mode, None).await?;
        self.commit_unkeyed(attempt).await
    }

    /// [`Self::update_users`] under an idempotency key; see
    /// [`Self::create_users_keyed`].
    pub async fn update_users_keyed<R>(
        &self,
        updates: Vec<(Uuid, UserPatch)>,
        mode: BatchMode,
        claim: IdempotencyClaim<'_>,
        respond: impl FnOnce(Vec<ItemOutcome<User>>) -> (R, Vec<u8>),
    ) -> Result<Written<R>, VpnUsersError> {
        let attempt = self.update_users_uncommitted(updates, mode, Some(claim)).await?;
        self.commit_keyed(attempt, claim, respond).await
    }

    async fn update_users_uncommitted(
        &self,
        updates: Vec<(Uuid, UserPatch)>,
        mode: BatchMode,
        claim: Option<IdempotencyClaim<'_>>,
    ) -> Result<Attempt<User>, VpnUsersError> {
        let mut seen_ids = HashSet::with_capacity(updates.len());
        let mut seen_new_usernames = HashSet::new();
        let mut checked: Vec<ItemOutcome<(Uuid, UserPatch)>> = Vec::with_capacity(updates.len());
        for (id, patch) in updates {
            let outcome = patch.validate().and_then(|()| {
                if !seen_ids.insert(id) {
                    return Err(VpnUsersError::DuplicateId { id });
                }
                if let Some(username) = &patch.username
                    && !seen_new_usernames.insert(username.clone())
                {
                    return Err(VpnUsersError::DuplicateUsernameInBatch { username: username.clone() });
                }
                Ok((id, patch))
            });
            checked.push(outcome);
        }
        refuse_if_any_failed(&mut checked, mode)?;

        let now = crate::model::now_micros();
        let transaction = self.begin_write().await?;
        if let Some(claim) = claim
            && let Some(stored) = self.claim_key(&transaction, claim, now).await?
        {
            transaction.rollback().await?;
            return Ok(Attempt::Replayed(stored));
        }
        let ids: Vec<Uuid> = checked.iter().filter_map(|item| item.as_ref().ok().map(|(id, _)| *id)).collect();
        let current = select_by_ids(&transaction, &ids, true).await?;
        let new_usernames: Vec<&str> =
            checked.iter().filter_map(|item| item.as_ref().ok()?.1.username.as_deref()).collect();
        let username_owners = username_owners(&transaction, &new_usernames).await?;

        let mut outcomes: Vec<ItemOutcome<User>> = Vec::with_capacity(checked.len());
        for item in checked {
            let outcome = item.and_then(|(id, patch)| {
                let existing = current.get(&id).ok_or(VpnUsersError::UserNotFound { id })?;
                if let Some(username) = &patch.username
                    && username_owners.get(username.as_str()).is_some_and(|owner| *owner != id)
                {
                    return Err(VpnUsersError::UsernameTaken { username: username.clone() });
                }
                Ok(apply_patch(existing.clone(), patch, now))
            });
            outcomes.push(outcome);
        }
        if let Err(error) = refuse_if_any_failed(&mut outcomes, mode) {
            transaction.rollback().await?;
            return Err(error);
        }
        for user in outcomes.iter().filter_map(|outcome| outcome.as_ref().ok()) {
            let update = update_statement(user);
            if let Err(error) = transaction.execute(&update).await {
                // Another writer took the name after our check; nothing of
                // this batch is kept.
                transaction.rollback().await?;
                return Err(match error.sql_err() {
                    Some(SqlErr::UniqueConstraintViolation(_)) => {
                        VpnUsersError::UsernameTaken { username: user.username.clone() }
                    }
                    _ => VpnUsersError::from(error),
                });
            }
        }
        Ok(Attempt::Open { transaction: Some(transaction), outcomes, rows_written: 0 })
    }

    /// Deletes users in one statement. Per item: a repeated or unknown id.
    pub async fn delete_users(&self, ids: Vec<Uuid>, mode: BatchMode) -> Result<Vec<ItemOutcome<Uuid>>, VpnUsersError> {
        let attempt = self.delete_users_uncommitted(ids, mode, None).await?;
        self.commit_unkeyed(attempt).await
    }

    /// [`Self::delete_users`] under an idempotency key; see
    /// [`Self::create_users_keyed`].
    pub async fn delete_users_keyed<R>(
        &self,
        ids: Vec<Uuid>,
        mode: BatchMode,
        claim: IdempotencyClaim<'_>,
        respond: impl FnOnce(Vec<ItemOutcome<Uuid>>) -> (R, Vec<u8>),
    ) -> Result<Written<R>, VpnUsersError> {
        let attempt = self.delete_users_uncommitted(ids, mode, Some(claim)).await?;
        self.commit_keyed(attempt, claim, respond).await
    }

    async fn delete_users_uncommitted(
        &self,
        ids: Vec<Uuid>,
        mode: BatchMode,
        claim: Option<IdempotencyClaim<'_>>,
    ) -> Result<Attempt<Uuid>, VpnUsersError> {
        let mut seen = HashSet::with_capacity(ids.len());
        let mut outcomes: Vec<ItemOutcome<Uuid>> = ids
            .into_iter()
            .map(|id| if seen.insert(id) { Ok(id) } else { Err(VpnUsersError::DuplicateId { id }) })
            .collect();
        refuse_if_any_failed(&mut outcomes, mode)?;
        let targets: Vec<Uuid> = outcomes.iter().filter_map(|outcome| outcome.as_ref().ok().copied()).collect();
        if targets.is_empty() && claim.is_none() {
            return Ok(Attempt::Open { transaction: None, outcomes, rows_written: 0 });
        }
        let transaction = self.begin_write().await?;
        if let Some(claim) = claim
            && let Some(stored) = self.claim_key(&transaction, claim, crate::model::now_micros()).await?
        {
            transaction.rollback().await?;
            return Ok(Attempt::Replayed(stored));
        }
        let mut deleted = HashSet::new();
        if !targets.is_empty() {
            let delete = Query::delete()
                .from_table(vpn_user::Entity)
                .and_where(id_is_in(self.backend(), targets))
                .returning_col(vpn_user::Column::Id)
                .to_owned();
            for row in transaction.query_all(&delete).await? {
                deleted.insert(row.try_get::<Uuid>("", "id")?);
            }
        }
        for outcome in &mut outcomes {
            if let Ok(id) = outcome
                && !deleted.contains(id)
            {
                *outcome = Err(VpnUsersError::UserNotFound { id: *id });
            }
        }
        if let Err(error) = refuse_if_any_failed(&mut outcomes, mode) {
            transaction.rollback().await?;
            return Err(error);
        }
        Ok(Attempt::Open { transaction: Some(transaction), outcomes, rows_written: 0 })
    }

    /// Commits a write made without a key.
    async fn commit_unkeyed<T>(&self, attempt: Attempt<T>) -> Result<Vec<ItemOutcome<T>>, VpnUsersError> {
        match attempt {
            Attempt::Open { transaction, outcomes, rows_written } => {
                if let Some(transaction) = transaction {
                    transaction.commit().await?;
                }
                self.note_rows_written(rows_written);
                Ok(outcomes)
            }
            Attempt::Replayed(_) => unreachable!("only a claimed key replays"),
        }
    }

    /// Stores the response with the key, then commits, so both are kept or
    /// neither is.
    async fn commit_keyed<T, R>(
        &self,
        attempt: Attempt<T>,
        claim: IdempotencyClaim<'_>,
        respond: impl FnOnce(Vec<ItemOutcome<T>>) -> (R, Vec<u8>),
    ) -> Result<Written<R>, VpnUsersError> {
        match attempt {
            Attempt::Open { transaction, outcomes, rows_written } => {
                let transaction = transaction.expect("a keyed write always opens a transaction");
                let (response, encoded) = respond(outcomes);
                let update = Query::update()
                    .table(VpnUsersIdempotency::Table)
                    .value(VpnUsersIdempotency::Response, encoded)
                    .and_where(Expr::col(VpnUsersIdempotency::IdempotencyKey).eq(claim.key.key()))
                    .to_owned();
                transaction.execute(&update).await?;
                transaction.commit().await?;
                self.note_rows_written(rows_written);
                Ok(Written::Done(response))
            }
            Attempt::Replayed(stored) => Ok(Written::Replayed(stored)),
        }
    }

    /// Claims `claim`'s key in `transaction`: `None` when it is new (or
    /// expired) and now held by this transaction, the stored response when it
    /// already answered the same request, `RequestIdReused` when it answered
    /// another. On PostgreSQL a concurrent claim of the same key waits here
    /// for the first transaction, then sees its outcome.
    async fn claim_key(
        &self,
        transaction: &DatabaseTransaction,
        claim: IdempotencyClaim<'_>,
        now_micros: i64,
    ) -> Result<Option<Vec<u8>>, VpnUsersError> {
        self.purge_expired_keys(transaction, now_micros).await?;
        let insert = Query::insert()
            .into_table(VpnUsersIdempotency::Table)
            .columns([
                VpnUsersIdempotency::IdempotencyKey,
                VpnUsersIdempotency::RequestSha256,
                VpnUsersIdempotency::Response,
                VpnUsersIdempotency::ExpiresAtMicros,
            ])
            .values_panic([
                claim.key.key().into(),
                claim.key.request_sha256().to_vec().into(),
                // Filled in by `commit_keyed` before the commit.
                Vec::<u8>::new().into(),
                claim.expires_at_micros.into(),
            ])
            .on_conflict(
                OnConflict::column(VpnUsersIdempotency::IdempotencyKey)
                    .update_columns([
                        VpnUsersIdempotency::RequestSha256,
                        VpnUsersIdempotency::Response,
                        VpnUsersIdempotency::ExpiresAtMicros,
                    ])
                    // Only an expired key is taken over.
                    .action_and_where(
                        Expr::col((VpnUsersIdempotency::Table, VpnUsersIdempotency::ExpiresAtMicros)).lte(now_micros),
                    )
                    .to_owned(),
            )
            .returning_col(VpnUsersIdempotency::IdempotencyKey)
            .to_owned();
        if !transaction.query_all(&insert).await?.is_empty() {
            return Ok(None);
        }
        let select = Query::select()
            .columns([VpnUsersIdempotency::RequestSha256, VpnUsersIdempotency::Response])
            .from(VpnUsersIdempotency::Table)
            .and_where(Expr::col(VpnUsersIdempotency::IdempotencyKey).eq(claim.key.key()))
            .to_owned();
        let row = transaction.query_one(&select).await?.ok_or_else(|| VpnUsersError::CorruptRow {
            reason: "idempotency key neither inserted nor found".to_owned(),
        })?;
        let stored_sha256: Vec<u8> = row.try_get("", "request_sha256")?;
        if stored_sha256.as_slice() != claim.key.request_sha256() {
            return Err(VpnUsersError::RequestIdReused);
        }
        Ok(Some(row.try_get("", "response")?))
    }

    /// Deletes expired keys, at most once per [`KEY_PURGE_INTERVAL_MICROS`]
    /// (a claim of an expired key takes it over anyway; this bounds the table).
    async fn purge_expired_keys(&self, transaction: &DatabaseTransaction, now_micros: i64) -> Result<(), DbErr> {
        let due = self.next_key_purge_micros.load(Ordering::Relaxed);
        if now_micros < due
            || self
                .next_key_purge_micros
                .compare_exchange(due, now_micros + KEY_PURGE_INTERVAL_MICROS, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(());
        }
        let delete = Query::delete()
            .from_table(VpnUsersIdempotency::Table)
            .and_where(Expr::col(VpnUsersIdempotency::ExpiresAtMicros).lte(now_micros))
            .to_owned();
        transaction.execute(&delete).await?;
        Ok(())
    }

    /// Reads users by id in one query; unknown ids are absent from the map.
    pub async fn get_users(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, User>, VpnUsersError> {
        select_by_ids(&self.db, ids, false).await
    }
}

/// In ALL_OR_NOTHING mode, turns the first failed item into the batch's error.
fn refuse_if_any_failed<T>(outcomes: &mut [ItemOutcome<T>], mode: BatchMode) -> Result<(), VpnUsersError> {
    if mode == BatchMode::PerItem {
        return Ok(());
    }
    let Some(index) = outcomes.iter().position(Result::is_err) else {
        return Ok(());
    };
    // The placeholder is never read: the whole batch is refused.
    let failed = std::mem::replace(&mut outcomes[index], Err(VpnUsersError::EmptyUpdate));
    match failed {
        Err(source) => Err(VpnUsersError::BatchItemFailed { index, source: Box::new(source) }),
        Ok(_) => unreachable!("position found an error"),
    }
}

fn apply_patch(mut user: User, patch: UserPatch, now_micros: i64) -> User {
    if let Some(username) = patch.username {
        user.username = username;
    }
    if let Some(email) = patch.email {
        user.email = email;
    }
    if let Some(status) = patch.status {
        user.status = status;
    }
    if let Some(protocol) = patch.protocol {
        user.protocol = protocol;
    }
    if let Some(bytes) = patch.traffic_used_bytes {
        user.traffic_used_bytes = bytes;
    }
    if let Some(bytes) = patch.traffic_limit_bytes {
        user.traffic_limit_bytes = bytes;
    }
    if let Some(expires_at_micros) = patch.expires_at_micros {
        user.expires_at_micros = expires_at_micros;
    }
    if let Some(note) = patch.note {
        user.note = note;
    }
    user.updated_at_micros = std::cmp::max(now_micros, user.updated_at_micros);
    user
}

/// The statements that insert `users`, each returning the ids it inserted.
/// A username taken by another writer is skipped, not an error, so the
/// statements settle every item and the transaction is never aborted.
/// (Usernames repeated inside the batch were refused before.)
fn insert_statements(backend: DbBackend, users: &[&User]) -> Vec<Statement> {
    if backend == DbBackend::Postgres {
        return vec![postgres_insert(users)];
    }
    users
        .chunks(SQLITE_MAX_ROWS_PER_INSERT)
        .map(|chunk| {
            let mut insert = Query::insert();
            insert.into_table(vpn_user::Entity).columns(WRITTEN_COLUMNS);
            for user in chunk {
                insert.values_panic(written_values(user).map(SimpleExpr::from));
            }
            insert
                .on_conflict(OnConflict::column(vpn_user::Column::Username).do_nothing().to_owned())
                .returning_col(vpn_user::Column::Id);
            backend.build(&insert)
        })
        .collect()
}

/// One `INSERT .. SELECT FROM UNNEST(..)` with an array per column: twelve
/// parameters whatever the batch size, so the server parses and plans one
/// statement text (a `VALUES` list of 100 rows is 1,200 parameters, planned
/// anew for every batch size), and binding is a copy per column.
fn postgres_insert(users: &[&User]) -> Statement {
    let mut columns: [Vec<Value>; 12] = std::array::from_fn(|_| Vec::with_capacity(users.len()));
    for user in users {
        for (column, value) in columns.iter_mut().zip(written_values(user)) {
            column.push(value);
        }
    }
    let names: Vec<&str> = WRITTEN_COLUMNS.iter().map(IdenStatic::as_str).collect();
    let arrays: Vec<String> = WRITTEN_ARRAY_TYPES
        .iter()
        .enumerate()
        .map(|(index, (_, sql_type))| format!("${}::{sql_type}[]", index + 1))
        .collect();
    let sql = format!(
        "INSERT INTO vpn_users ({}) SELECT * FROM UNNEST({}) ON CONFLICT (username) DO NOTHING RETURNING id",
        names.join(", "),
        arrays.join(", ")
    );
    let values = WRITTEN_ARRAY_TYPES
        .into_iter()
        .zip(columns)
        .map(|((array_type, _), column)| Value::Array(array_type, Some(Box::new(column))));
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// `column` is one of `values`: on PostgreSQL `= ANY($1)` with one array of
/// `array_type` (one statement text, one plan, for any number of values), on
/// SQLite `IN (?, ..)`. Callers keep `values` within SQLite's variable limit
/// (the batch and bulk limits of `VpnUsersConfig` do).
fn column_is_in(backend: DbBackend, column: vpn_user::Column, array_type: ArrayType, values: Vec<Value>) -> SimpleExpr {
    if backend == DbBackend::Postgres {
        Expr::col(column).eq(PgFunc::any(Expr::val(Value::Array(array_type, Some(Box::new(values))))))
    } else {
        Expr::col(column).is_in(values)
    }
}

/// `id` is one of `ids`; see [`column_is_in`].
fn id_is_in(backend: DbBackend, ids: impl IntoIterator<Item = Uuid>) -> SimpleExpr {
    let ids = ids.into_iter().map(Value::from).collect();
    column_is_in(backend, vpn_user::Column::Id, ArrayType::Uuid, ids)
}

/// The columns a write sets (all but `seq`).
const WRITTEN_COLUMNS: [vpn_user::Column; 12] = [
    vpn_user::Column::Id,
    vpn_user::Column::Username,
    vpn_user::Column::Email,
    vpn_user::Column::Status,
    vpn_user::Column::Protocol,
    vpn_user::Column::TrafficUsedBytes,
    vpn_user::Column::TrafficLimitBytes,
    vpn_user::Column::ExpiresAtMicros,
    vpn_user::Column::CreatedAtMicros,
    vpn_user::Column::UpdatedAtMicros,
    vpn_user::Column::Note,
    vpn_user::Column::SearchText,
];

/// The PostgreSQL array type of each of [`WRITTEN_COLUMNS`], as bound and as
/// cast in SQL.
const WRITTEN_ARRAY_TYPES: [(ArrayType, &str); 12] = [
    (ArrayType::Uuid, "uuid"),
    (ArrayType::String, "text"),
    (ArrayType::String, "text"),
    (ArrayType::String, "text"),
    (ArrayType::String, "text"),
    (ArrayType::BigInt, "int8"),
    (ArrayType::BigInt, "int8"),
    (ArrayType::BigInt, "int8"),
    (ArrayType::BigInt, "int8"),
    (ArrayType::BigInt, "int8"),
    (ArrayType::String, "text"),
    (ArrayType::String, "text"),
];

/// Values for [`WRITTEN_COLUMNS`], in order. Byte counts were validated to
/// fit `i64`.
fn written_values(user: &User) -> [Value; 12] {
    let bytes = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    [
        user.id.into(),
        user.username.clone().into(),
        user.email.clone().into(),
        user.status.as_db_str().into(),
        user.protocol.as_db_str().into(),
        bytes(user.traffic_used_bytes).into(),
        bytes(user.traffic_limit_bytes).into(),
        user.expires_at_micros.unwrap_or(NEVER_EXPIRES).into(),
        user.created_at_micros.into(),
        user.updated_at_micros.into(),
        user.note.clone().into(),
        search::search_text(&user.username, &user.email, &user.note).into(),
    ]
}

fn update_statement(user: &User) -> UpdateStatement {
    let mut update = Query::update();
    update.table(vpn_user::Entity);
    for (column, value) in WRITTEN_COLUMNS.into_iter().zip(written_values(user)) {
        if matches!(column, vpn_user::Column::Id | vpn_user::Column::CreatedAtMicros) {
            continue;
        }
        update.value(column, value);
    }
    update.and_where(Expr::col(vpn_user::Column::Id).eq(user.id));
    update
}

fn select_users() -> SelectStatement {
    Query::select().columns(vpn_user::Column::iter()).from(vpn_user::Entity).to_owned()
}

async fn select_by_ids<C: ConnectionTrait>(
    connection: &C,
    ids: &[Uuid],
    lock_for_update: bool,
) -> Result<HashMap<Uuid, User>, VpnUsersError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut select = select_users();
    select.and_where(id_is_in(connection.get_database_backend(), ids.iter().copied()));
    if lock_for_update {
        // PostgreSQL only; sea-query leaves it out for SQLite, whose
        // IMMEDIATE transaction already holds the write lock.
        select.lock(LockType::Update);
    }
    let mut users = HashMap::with_capacity(ids.len());
    for row in connection.query_all(&select).await? {
        let user = user_from_model(vpn_user::Model::from_query_result(&row, "")?)?;
        users.insert(user.id, user);
    }
    Ok(users)
}

async fn username_owners<C: ConnectionTrait>(
    connection: &C,
    usernames: &[&str],
) -> Result<HashMap<String, Uuid>, VpnUsersError> {
    if usernames.is_empty() {
        return Ok(HashMap::new());
    }
    let select = Query::select()
        .columns([vpn_user::Column::Id, vpn_user::Column::Username])
        .from(vpn_user::Entity)
        .and_where(column_is_in(
            connection.get_database_backend(),
            vpn_user::Column::Username,
            ArrayType::String,
            usernames.iter().map(|username| Value::from(*username)).collect(),
        ))
        .to_owned();
    let mut owners = HashMap::new();
    for row in connection.query_all(&select).await? {
        owners.insert(row.try_get::<String>("", "username")?, row.try_get::<Uuid>("", "id")?);
    }
    Ok(owners)
}

/// Reads a stored row; a value the service never writes is `CorruptRow`.
fn user_from_model(model: vpn_user::Model) -> Result<User, VpnUsersError> {
    let corrupt = |reason: String| VpnUsersError::CorruptRow { reason };
    let bytes = |field: &str, value: i64| u64::try_from(value).map_err(|_| corrupt(format!("negative {field}")));
    Ok(User {
        id: model.id,
        status: UserStatus::from_db_str(&model.status)
            .ok_or_else(|| corrupt(format!("unknown status `{}`", model.status)))?,
        protocol: VpnProtocol::from_db_str(&model.protocol)
            .ok_or_else(|| corrupt(format!("unknown protocol `{}`", model.protocol)))?,
        traffic_used_bytes: bytes("traffic_used_bytes", model.traffic_used_bytes)?,
        traffic_limit_bytes: bytes("traffic_limit_bytes", model.traffic_limit_bytes)?,
        expires_at_micros: (model.expires_at_micros != NEVER_EXPIRES).then_some(model.expires_at_micros),
        created_at_micros: model.created_at_micros,
        updated_at_micros: model.updated_at_micros,
        username: model.username,
        email: model.email,
        note: model.note,
    })
}

// === impl UserStore: lists and search ===

impl UserStore {
    /// One page of users matching `query.filter`, in `query.sort` order.
    pub async fn list_users(&self, query: &ListQuery) -> Result<ListPage, VpnUsersError> {
        debug_assert!(query.page_size >= 1, "the caller resolves page size 0 to the default");
        query.filter.validate()?;
        let context = list_context(&query.filter, query.sort);
        let sort_column = query.sort.field.column();
        let order = match query.sort.direction {
            SortDirection::Ascending => Order::Asc,
            SortDirection::Descending => Order::Desc,
        };

        let mut select = select_users();
        select.cond_where(query.filter.condition(self.backend()));
        let page_number = if let Some(token) = &query.page_token {
            let cursor: ListCursor = self.page_token_key.verify(&context, token)?;
            let key_matches_sort = matches!(
                (&cursor.key, query.sort.field),
                (SortKey::Text(_), SortField::Username)
                    | (
                        SortKey::Integer(_),
                        SortField::CreatedAt | SortField::UpdatedAt | SortField::ExpiresAt | SortField::TrafficUsed
                    )
            );
            if !key_matches_sort {
                return Err(VpnUsersError::InvalidPageToken);
            }
            let after_key = match cursor.key {
                SortKey::Integer(value) => Expr::val(value),
                SortKey::Text(value) => Expr::val(value),
            };
            // Row-value comparison: one index range scan on (column, id).
            let row = Expr::tuple([Expr::col(sort_column), Expr::col(vpn_user::Column::Id)]);
            let bound = Expr::tuple([after_key, Expr::val(cursor.id)]);
            select.and_where(match query.sort.direction {
                SortDirection::Ascending => row.gt(bound),
                SortDirection::Descending => row.lt(bound),
            });
            cursor.page
        } else {
            let page_number = std::cmp::max(query.page_number, 1);
            select.offset(u64::from(page_number - 1) * u64::from(query.page_size));
            page_number
        };
        select
            .order_by(sort_column, order.clone())
            .order_by(vpn_user::Column::Id, order)
            .limit(u64::from(query.page_size) + 1);

        let rows = self.db.query_all(&select).await?;
        let has_more = rows.len() > query.page_size as usize;
        let mut users = Vec::with_capacity(rows.len().min(query.page_size as usize));
        for row in rows.iter().take(query.page_size as usize) {
            users.push(user_from_model(vpn_user::Model::from_query_result(row, "")?)?);
        }
        let next_page_token = match users.last() {
            Some(last) if has_more => {
                let key = match query.sort.field {
                    SortField::Username => SortKey::Text(last.username.clone()),
                    SortField::CreatedAt => SortKey::Integer(last.created_at_micros),
                    SortField::UpdatedAt => SortKey::Integer(last.updated_at_micros),
                    SortField::ExpiresAt => SortKey::Integer(last.expires_at_micros.unwrap_or(NEVER_EXPIRES)),
                    SortField::TrafficUsed => {
                        SortKey::Integer(i64::try_from(last.traffic_used_bytes).unwrap_or(i64::MAX))
                    }
                };
                let cursor = ListCursor { page: page_number + 1, key, id: last.id };
                Some(self.page_token_key.sign(&context, &cursor))
            }
            _ => None,
        };
        let total_size = if query.include_total_size { Some(self.count(&query.filter).await?) } else { None };
        Ok(ListPage { users, next_page_token, page_number, total_size })
    }

    /// Users matching `filter`.
    pub async fn count(&self, filter: &UserFilter) -> Result<u64, VpnUsersError> {
        let select = Query::select()
            .expr_as(Expr::col(vpn_user::Column::Seq).count(), Alias::new("matching"))
            .from(vpn_user::Entity)
            .cond_where(filter.condition(self.backend()))
            .to_owned();
        let row = self.db.query_one(&select).await?;
        let count: i64 = match row {
            Some(row) => row.try_get("", "matching")?,
            None => 0,
        };
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// Full-text search over username, email and note; see [`crate::search`].
    pub async fn search_users(
        &self,
        query_text: &str,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<SearchPage, VpnUsersError> {
        let words = search::query_words(query_text)?;
        let context = format!("search-v1\n{}", words.join(" ")).into_bytes();
        let offset = match page_token {
            Some(token) => self.page_token_key.verify::<SearchCursor>(&context, token)?.offset,
            None => 0,
        };
        if words.is_empty() {
            return Ok(SearchPage { hits: Vec::new(), next_page_token: None });
        }
        let limit = i64::from(page_size) + 1;
        let offset_value = i64::try_from(offset).map_err(|_| VpnUsersError::InvalidPageToken)?;
        let user_columns = USER_COLUMNS_SQL;
        let statement = match self.backend() {
            DbBackend::Postgres => Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT {user_columns}, ts_rank(u.search_vector, q)::float8 AS score \
                     FROM vpn_users u, to_tsquery('simple', $1) q \
                     WHERE u.search_vector @@ q \
                     ORDER BY score DESC, u.username LIMIT $2 OFFSET $3"
                ),
                [Value::from(search::tsquery_expression(&words)), limit.into(), offset_value.into()],
            ),
            backend => Statement::from_sql_and_values(
                backend,
                // bm25() is lower for better matches; negate it into a score.
                format!(
                    "SELECT {user_columns}, -bm25(vpn_users_fts) AS score \
                     FROM vpn_users_fts JOIN vpn_users u ON u.seq = vpn_users_fts.rowid \
                     WHERE vpn_users_fts MATCH ? \
                     ORDER BY score DESC, u.username LIMIT ? OFFSET ?"
                ),
                [Value::from(search::fts5_expression(&words)), limit.into(), offset_value.into()],
            ),
        };
        let rows = self.db.query_all_raw(statement).await?;
        let page_len = page_size as usize;
        let mut hits = Vec::with_capacity(rows.len().min(page_len));
        for row in rows.iter().take(page_len) {
            let user = user_from_model(vpn_user::Model::from_query_result(row, "")?)?;
            hits.push(SearchHit { user, score: row.try_get("", "score")? });
        }
        let next_page_token = (rows.len() > page_len)
            .then(|| self.page_token_key.sign(&context, &SearchCursor { offset: offset + u64::from(page_size) }));
        Ok(SearchPage { hits, next_page_token })
    }

    /// Up to `limit` users matching `filter` with ids above `after`, in id order.
    pub async fn export_chunk(
        &self,
        filter: &UserFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<User>, VpnUsersError> {
        let mut select = select_users();
        select.cond_where(filter.condition(self.backend()));
        if let Some(after) = after {
            select.and_where(Expr::col(vpn_user::Column::Id).gt(after));
        }
        select.order_by(vpn_user::Column::Id, Order::Asc).limit(u64::from(limit));
        let mut users = Vec::new();
        for row in self.db.query_all(&select).await? {
            users.push(user_from_model(vpn_user::Model::from_query_result(&row, "")?)?);
        }
        Ok(users)
    }
}

/// The user columns, qualified with `u.`, for hand-written SQL.
const USER_COLUMNS_SQL: &str = "u.seq, u.id, u.username, u.email, u.status, u.protocol, u.traffic_used_bytes, \
     u.traffic_limit_bytes, u.expires_at_micros, u.created_at_micros, u.updated_at_micros, u.note, u.search_text";

/// What a list token is bound to: a version, the filter and the sort.
fn list_context(filter: &UserFilter, sort: UserSort) -> Vec<u8> {
    let mut context = b"list-v1\n".to_vec();
    context.extend(serde_json::to_vec(&(filter, sort)).expect("filters serialize to JSON"));
    context
}

// === impl UserStore: stats and bulk status ===

impl UserStore {
    /// Counts, sums and sign-ups of the last `signup_days` days (today, UTC,
    /// included), read in one transaction so they agree with each other: one
    /// pass over the table for every count and sum (see [`totals_statement`]),
    /// and a range of the `created_at` index for the days.
    pub async fn stats(&self, signup_days: u32, now_micros: i64) -> Result<UserStats, VpnUsersError> {
        let transaction = self.db.begin().await?;
        let mut stats = UserStats::default();

        let row = transaction
            .query_one_raw(totals_statement(self.backend()))
            .await?
            .ok_or_else(|| VpnUsersError::CorruptRow { reason: "an aggregate returned no row".to_owned() })?;
        let count = |column: &str| -> Result<u64, VpnUsersError> {
            Ok(u64::try_from(row.try_get::<i64>("", column)?).unwrap_or_default())
        };
        stats.total_users = count("users")?;
        for (index, counted_status) in UserStatus::ALL.into_iter().enumerate() {
            let users = count(&format!("status_{index}"))?;
            if users > 0 {
                stats.by_status.push((counted_status, users));
            }
        }
        for (index, counted_protocol) in VpnProtocol::ALL.into_iter().enumerate() {
            let users = count(&format!("protocol_{index}"))?;
            if users > 0 {
                stats.by_protocol.push((counted_protocol, users));
            }
        }
        // Every stored value is one the service wrote; a row outside the
        // known ones is corrupt, as when it is read.
        if stats.by_status.iter().map(|(_, users)| users).sum::<u64>() != stats.total_users {
            return Err(VpnUsersError::CorruptRow { reason: "a user has an unknown status".to_owned() });
        }
        if stats.by_protocol.iter().map(|(_, users)| users).sum::<u64>() != stats.total_users {
            return Err(VpnUsersError::CorruptRow { reason: "a user has an unknown protocol".to_owned() });
        }
        stats.traffic_used_total_bytes = saturating_bytes(row.try_get::<f64>("", "used")?);
        stats.traffic_limit_total_bytes = saturating_bytes(row.try_get::<f64>("", "limited")?);
        stats.over_limit_users = count("over")?;

        let today = now_micros.div_euclid(MICROS_PER_DAY);
        let first_day = today - i64::from(std::cmp::max(signup_days, 1)) + 1;
        let day_sql = match self.backend() {
            DbBackend::Postgres => {
                "SELECT created_at_micros / 86400000000 AS day, COUNT(*) AS users FROM vpn_users \
                 WHERE created_at_micros >= $1 GROUP BY 1"
            }
            _ => {
                "SELECT created_at_micros / 86400000000 AS day, COUNT(*) AS users FROM vpn_users \
                 WHERE created_at_micros >= ? GROUP BY 1"
            }
        };
        let statement =
            Statement::from_sql_and_values(self.backend(), day_sql, [Value::from(first_day * MICROS_PER_DAY)]);
        let mut per_day: HashMap<i64, u64> = HashMap::new();
        for row in transaction.query_all_raw(statement).await? {
            let day: i64 = row.try_get("", "day")?;
            per_day.insert(day, u64::try_from(row.try_get::<i64>("", "users")?).unwrap_or_default());
        }
        transaction.commit().await?;
        stats.signups_per_day = (first_day..=today)
            .map(|day| (day * MICROS_PER_DAY, per_day.get(&day).copied().unwrap_or_default()))
            .collect();
        Ok(stats)
    }

    /// Sets `status` on the selected users in one statement.
    pub async fn set_status(
        &self,
        status: UserStatus,
        selector: &StatusSelector,
    ) -> Result<SetStatusOutcome, VpnUsersError> {
        let now = crate::model::now_micros();
        let mut update = Query::update();
        update
            .table(vpn_user::Entity)
            .value(vpn_user::Column::Status, status.as_db_str())
            .value(vpn_user::Column::UpdatedAtMicros, now);
        match selector {
            StatusSelector::Ids(ids) => {
                if ids.is_empty() {
                    return Ok(SetStatusOutcome::default());
                }
                let unique_ids: HashSet<Uuid> = ids.iter().copied().collect();
                update
                    .and_where(id_is_in(self.backend(), unique_ids.iter().copied()))
                    .returning_col(vpn_user::Column::Id);
                let mut changed_ids = Vec::with_capacity(unique_ids.len());
                // A transaction of its own only for `begin_write`'s settings.
                let transaction = self.begin_write().await?;
                for row in transaction.query_all(&update).await? {
                    changed_ids.push(row.try_get::<Uuid>("", "id")?);
                }
                transaction.commit().await?;
                let changed: HashSet<Uuid> = changed_ids.iter().copied().collect();
                let mut reported = HashSet::new();
                let mut not_found_ids: Vec<Uuid> = Vec::new();
                for id in ids {
                    if !changed.contains(id) && reported.insert(*id) {
                        not_found_ids.push(*id);
                    }
                }
                self.note_rows_written(changed_ids.len() as u64);
                Ok(SetStatusOutcome { affected_count: changed_ids.len() as u64, not_found_ids, changed_ids })
            }
            StatusSelector::Filter(filter) => {
                if filter.is_empty() {
                    return Err(VpnUsersError::EmptyFilter);
                }
                filter.validate()?;
                update.cond_where(filter.condition(self.backend()));
                let transaction = self.begin_write().await?;
                let result = transaction.execute(&update).await?;
                transaction.commit().await?;
                self.note_rows_written(result.rows_affected());
                Ok(SetStatusOutcome { affected_count: result.rows_affected(), ..SetStatusOutcome::default() })
            }
        }
    }
}

/// Every count and sum of [`UserStore::stats`] in one pass over the table:
/// users, users per status and per protocol (`status_<i>`, `protocol_<i>`,
/// in the order of `ALL`), traffic totals and users over their limit. One
/// scan with conditional counts instead of a `GROUP BY` per column, each of
/// which scanned (and on SQLite sorted) the whole table again. Sums are
/// doubles on both backends: exact below 2^53 bytes (8 PiB), never an
/// overflow error, and the same on SQLite and PostgreSQL.
fn totals_statement(backend: DbBackend) -> Statement {
    let mut values: Vec<Value> = Vec::new();
    let mut placeholder = |value: &'static str| {
        values.push(Value::from(value));
        match backend {
            DbBackend::Postgres => format!("${}", values.len()),
            _ => "?".to_owned(),
        }
    };
    let mut columns = vec!["COUNT(*) AS users".to_owned()];
    for (index, status) in UserStatus::ALL.into_iter().enumerate() {
        let value = placeholder(status.as_db_str());
        columns.push(format!("COUNT(CASE WHEN status = {value} THEN 1 END) AS status_{index}"));
    }
    for (index, protocol) in VpnProtocol::ALL.into_iter().enumerate() {
        let value = placeholder(protocol.as_db_str());
        columns.push(format!("COUNT(CASE WHEN protocol = {value} THEN 1 END) AS protocol_{index}"));
    }
    columns.push(match backend {
        DbBackend::Postgres => "COALESCE(SUM(traffic_used_bytes), 0)::float8 AS used, \
                                COALESCE(SUM(traffic_limit_bytes), 0)::float8 AS limited"
            .to_owned(),
        _ => "TOTAL(traffic_used_bytes) AS used, TOTAL(traffic_limit_bytes) AS limited".to_owned(),
    });
    columns.push(
        "COUNT(CASE WHEN traffic_limit_bytes > 0 AND traffic_used_bytes >= traffic_limit_bytes THEN 1 END) AS over"
            .to_owned(),
    );
    let sql = format!("SELECT {} FROM vpn_users", columns.join(", "));
    Statement::from_sql_and_values(backend, sql, values)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // saturating by design: `as` clamps to 0..=u64::MAX
fn saturating_bytes(total: f64) -> u64 {
    total as u64
}
