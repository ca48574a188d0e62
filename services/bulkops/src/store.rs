//! `JobStore`: jobs and targets in SQLite or PostgreSQL through sea-orm.
//! Plain Rust: no tonic, no proto. Every value is a bound parameter.
//!
//! Replicas share work through leases on job rows: a replica claims an
//! unfinished job whose lease has lapsed and renews the lease while it runs
//! the job. On PostgreSQL the claim reads with `FOR UPDATE SKIP LOCKED`, so two
//! replicas looking at once take different jobs instead of waiting on each
//! other; on SQLite the claim runs in a `BEGIN IMMEDIATE` transaction, so the
//! database's single writer serialises claims. A job is run by at most one
//! replica at a time either way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Order, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use tracing::info;

use crate::config::DatabaseLocation;
use crate::error::BulkOpsError;
use crate::model::{BulkMode, DomainState, Failure, JobState, OperationKind, Target, TargetCounts, TargetState};
use crate::schema::{Migrator, bulk_job, bulk_target};

/// A stored job row.
pub type JobRow = bulk_job::Model;
/// A stored target row.
pub type TargetRow = bulk_target::Model;

/// How often opening tries the migration before giving up.
const MIGRATION_ATTEMPTS: u32 = 5;
/// Targets inserted per statement: 21 bound values each, under SQLite's 32766.
const INSERT_CHUNK: usize = 1000;

/// Microseconds since the Unix epoch, as stored.
#[must_use]
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// A job to persist, already validated.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// What it does.
    pub kind: OperationKind,
    /// ATOMIC or BEST_EFFORT.
    pub mode: BulkMode,
    /// Most targets at once.
    pub max_concurrency: u32,
    /// The caller's key, if any.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request, hex.
    pub request_fingerprint: String,
    /// SUSPEND's reason.
    pub suspend_reason: String,
    /// BACKUP's directory.
    pub backup_directory: String,
    /// The starting call's correlation id.
    pub correlation_id: String,
    /// The targets, in order.
    pub targets: Vec<Target>,
}

/// What a created-or-found job is.
#[derive(Clone, Debug)]
pub enum Created {
    /// A new job.
    New(JobRow),
    /// The job already started with this idempotency key and the same request.
    Existing(JobRow),
}

/// An operation's outcome for one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded; `changed` when it changed the domain.
    Succeeded { changed: bool, detail: String },
    /// It failed.
    Failed(Failure),
}

/// How a job ended, as written by [`JobStore::finish_job`].
#[derive(Clone, Debug)]
pub struct JobEnd {
    /// The final state.
    pub state: JobState,
    /// Whether completed targets were undone.
    pub rollback_performed: bool,
}

/// Jobs and their targets in a SQL database.
#[derive(Clone, Debug)]
pub struct JobStore {
    db: DatabaseConnection,
}

// === impl JobStore: opening ===

impl JobStore {
    /// Connects (creating the SQLite file and its directory if needed) and
    /// applies pending migrations.
    pub async fn open(location: &DatabaseLocation, pool: mesh_kit::database::PoolSettings) -> Result<Self, DbErr> {
        let db = mesh_kit::database::connect(location, pool).await?;
        // Replicas starting together race to migrate; the loser fails on a
        // table the winner just created and, on a second look, finds the
        // migration recorded.
        let mut attempt = 0;
        while let Err(error) = Migrator::up(&db, None).await {
            attempt += 1;
            if attempt == MIGRATION_ATTEMPTS {
                return Err(error);
            }
            tracing::debug!(%error, attempt, "migration raced another replica; looking again");
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        info!(backend = ?db.get_database_backend(), "job store ready");
        Ok(Self { db })
    }

    /// Which database this is.
    #[must_use]
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// A write transaction; on SQLite it takes the write lock at once, so a
    /// read-then-write never fails halfway with `SQLITE_BUSY`.
    async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        self.db.begin_with_options(options).await
    }
}

// === impl JobStore: creating and reading ===

impl JobStore {
    /// Persists a job and all its targets in one transaction, or returns the
    /// job already stored under the same idempotency key.
    pub async fn create_job(&self, job: NewJob) -> Result<Created, BulkOpsError> {
        if let Some(key) = &job.idempotency_key
            && let Some(existing) = self.find_by_key(key).await?
        {
            return same_request(existing, &job.request_fingerprint);
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_micros();
        let row = bulk_job::ActiveModel {
            id: Set(id.clone()),
            idempotency_key: Set(job.idempotency_key.clone()),
            request_fingerprint: Set(job.request_fingerprint.clone()),
            kind: Set(job.kind.as_str().to_owned()),
            mode: Set(job.mode.as_str().to_owned()),
            state: Set(JobState::Pending.as_str().to_owned()),
            max_concurrency: Set(i32::try_from(job.max_concurrency).unwrap_or(i32::MAX)),
            suspend_reason: Set(job.suspend_reason.clone()),
            backup_directory: Set(job.backup_directory.clone()),
            correlation_id: Set(job.correlation_id.clone()),
            target_count: Set(i32::try_from(job.targets.len()).unwrap_or(i32::MAX)),
            cancel_requested: Set(false),
            rollback_performed: Set(false),
            stop_code: Set(0),
            stop_reason: Set(String::new()),
            stop_message: Set(String::new()),
            created_at_micros: Set(now),
            started_at_micros: Set(None),
            finished_at_micros: Set(None),
            lease_owner: Set(None),
            lease_expires_at_micros: Set(0),
        };
        let transaction = self.begin_write().await?;
        if let Err(error) = bulk_job::Entity::insert(row).exec_without_returning(&transaction).await {
            drop(transaction);
            // A concurrent start with the same key won the race: answer with its job.
            if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
                && let Some(key) = &job.idempotency_key
                && let Some(existing) = self.find_by_key(key).await?
            {
                return same_request(existing, &job.request_fingerprint);
            }
            return Err(error.into());
        }
        for (chunk_number, chunk) in job.targets.chunks(INSERT_CHUNK).enumerate() {
            let rows = chunk.iter().enumerate().map(|(offset, target)| {
                let index = chunk_number * INSERT_CHUNK + offset;
                new_target_row(&id, index, target)
            });
            bulk_target::Entity::insert_many(rows).exec_without_returning(&transaction).await?;
        }
        transaction.commit().await?;
        let stored = self.job(&id).await?.ok_or_else(|| BulkOpsError::CorruptRow { reason: "job vanished".into() })?;
        Ok(Created::New(stored))
    }

    /// The job started with `key`, if any.
    pub async fn find_by_key(&self, key: &str) -> Result<Option<JobRow>, DbErr> {
        bulk_job::Entity::find().filter(bulk_job::Column::IdempotencyKey.eq(key)).one(&self.db).await
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, DbErr> {
        bulk_job::Entity::find_by_id(id.to_owned()).one(&self.db).await
    }

    /// A job's targets counted by state.
    pub async fn counts(&self, id: &str) -> Result<TargetCounts, BulkOpsError> {
        let rows: Vec<(String, i64)> = bulk_target::Entity::find()
            .select_only()
            .column(bulk_target::Column::State)
            .column_as(Expr::col(bulk_target::Column::Idx).count(), "n")
            .filter(bulk_target::Column::JobId.eq(id))
            .group_by(bulk_target::Column::State)
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut counts = TargetCounts::default();
        for (state, count) in rows {
            let state = TargetState::parse(&state)
                .ok_or_else(|| BulkOpsError::CorruptRow { reason: format!("unknown target state {state:?}") })?;
            counts.add(state, u32::try_from(count).unwrap_or(u32::MAX));
        }
        Ok(counts)
    }

    /// Every target of a job, in job order.
    pub async fn targets(&self, id: &str) -> Result<Vec<TargetRow>, DbErr> {
        bulk_target::Entity::find()
            .filter(bulk_target::Column::JobId.eq(id))
            .order_by_asc(bulk_target::Column::Idx)
            .all(&self.db)
            .await
    }

    /// A job's targets in `state`, in job order.
    pub async fn targets_in(&self, id: &str, state: TargetState) -> Result<Vec<TargetRow>, DbErr> {
        bulk_target::Entity::find()
            .filter(bulk_target::Column::JobId.eq(id))
            .filter(bulk_target::Column::State.eq(state.as_str()))
            .order_by_asc(bulk_target::Column::Idx)
            .all(&self.db)
            .await
    }

    /// Targets whose latest outcome was recorded after `finish_seq`, in that order.
    pub async fn targets_finished_after(&self, id: &str, finish_seq: i64) -> Result<Vec<TargetRow>, DbErr> {
        bulk_target::Entity::find()
            .filter(bulk_target::Column::JobId.eq(id))
            .filter(bulk_target::Column::FinishSeq.gt(finish_seq))
            .order_by_asc(bulk_target::Column::FinishSeq)
            .order_by_asc(bulk_target::Column::Idx)
            .all(&self.db)
            .await
    }

    /// The highest `finish_seq` of a job (0 when none).
    pub async fn max_finish_seq(&self, id: &str) -> Result<i64, DbErr> {
        let max: Option<Option<i64>> = bulk_target::Entity::find()
            .select_only()
            .column_as(Expr::col(bulk_target::Column::FinishSeq).max(), "m")
            .filter(bulk_target::Column::JobId.eq(id))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(max.flatten().unwrap_or(0))
    }

    /// A page of jobs, newest first, after the `(created, id)` of the previous page's last job.
    pub async fn list_jobs(
        &self,
        page_size: u32,
        after: Option<(i64, String)>,
        state: Option<JobState>,
    ) -> Result<Vec<JobRow>, DbErr> {
        let mut query = bulk_job::Entity::find()
            .order_by(bulk_job::Column::CreatedAtMicros, sea_orm::Order::Desc)
            .order_by(bulk_job::Column::Id, sea_orm::Order::Desc)
            .limit(u64::from(page_size));
        if let Some((created, id)) = after {
            query = query.filter(
                bulk_job::Column::CreatedAtMicros
                    .lt(created)
                    .or(bulk_job::Column::CreatedAtMicros.eq(created).and(bulk_job::Column::Id.lt(id))),
            );
        }
        if let Some(state) = state {
            query = query.filter(bulk_job::Column::State.eq(state.as_str()));
        }
        query.all(&self.db).await
    }

    /// Records a cancel request; the replica running the job sees it at its
    /// next lease renewal (or at once, when it runs here). Returns the job.
    pub async fn request_cancel(&self, id: &str) -> Result<Option<JobRow>, DbErr> {
        bulk_job::Entity::update_many()
            .col_expr(bulk_job::Column::CancelRequested, Expr::value(true))
            .filter(bulk_job::Column::Id.eq(id))
            .filter(bulk_job::Column::State.is_in(JobState::CLAIMABLE.map(JobState::as_str)))
            .exec(&self.db)
            .await?;
        self.job(id).await
    }
}

fn same_request(existing: JobRow, fingerprint: &str) -> Result<Created, BulkOpsError> {
    if existing.request_fingerprint == fingerprint {
        Ok(Created::Existing(existing))
    } else {
        Err(BulkOpsError::IdempotencyKeyReused { job_id: existing.id })
    }
}

fn new_target_row(job_id: &str, index: usize, target: &Target) -> bulk_target::ActiveModel {
    bulk_target::ActiveModel {
        job_id: Set(job_id.to_owned()),
        idx: Set(i32::try_from(index).unwrap_or(i32::MAX)),
        server_id: Set(target.server_id.clone()),
        domain_name: Set(target.domain_name.clone()),
        state: Set(TargetState::Pending.as_str().to_owned()),
        changed: Set(false),
        operation_id: Set(String::new()),
        detail: Set(String::new()),
        error_code: Set(0),
        error_reason: Set(String::new()),
        error_domain: Set(String::new()),
        error_message: Set(String::new()),
        compensation_issued: Set(false),
        compensation_code: Set(0),
        compensation_reason: Set(String::new()),
        compensation_message: Set(String::new()),
        started_at_micros: Set(None),
        finished_at_micros: Set(None),
        finish_seq: Set(0),
        prior_state: Set(String::new()),
        attempt: Set(0),
    }
}

// === impl JobStore: leases ===

impl JobStore {
    /// Claims the oldest unfinished job whose lease has lapsed, for `lease`.
    pub async fn claim_job(&self, owner: &str, lease: Duration) -> Result<Option<JobRow>, DbErr> {
        let now = now_micros();
        let transaction = self.begin_write().await?;
        let mut select = Query::select();
        select
            .column(bulk_job::Column::Id)
            .from(bulk_job::Entity)
            .and_where(Expr::col(bulk_job::Column::State).is_in(JobState::CLAIMABLE.map(JobState::as_str)))
            .and_where(Expr::col(bulk_job::Column::LeaseExpiresAtMicros).lt(now))
            .order_by(bulk_job::Column::CreatedAtMicros, Order::Asc)
            .limit(1);
        if transaction.get_database_backend() == DbBackend::Postgres {
            // Another replica's claim in progress holds its row: skip it, take the next.
            select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let Some(row) = transaction.query_one(&select).await? else {
            return Ok(None);
        };
        let id: String = row.try_get("", "id")?;
        bulk_job::Entity::update_many()
            .col_expr(bulk_job::Column::LeaseOwner, Expr::value(owner))
            .col_expr(bulk_job::Column::LeaseExpiresAtMicros, Expr::value(now + micros(lease)))
            .filter(bulk_job::Column::Id.eq(id.as_str()))
            .exec(&transaction)
            .await?;
        transaction.commit().await?;
        self.job(&id).await
    }

    /// Extends `owner`'s lease on a job. `Ok(None)` when the lease is no
    /// longer `owner`'s (it lapsed and another replica took the job); else
    /// whether a cancel was requested.
    pub async fn renew_lease(&self, id: &str, owner: &str, lease: Duration) -> Result<Option<bool>, DbErr> {
        let result = bulk_job::Entity::update_many()
            .col_expr(bulk_job::Column::LeaseExpiresAtMicros, Expr::value(now_micros() + micros(lease)))
            .filter(bulk_job::Column::Id.eq(id))
            .filter(bulk_job::Column::LeaseOwner.eq(owner))
            .exec(&self.db)
            .await?;
        if result.rows_affected == 0 {
            return Ok(None);
        }
        Ok(self.job(id).await?.map(|job| job.cancel_requested))
    }

    /// Gives a lease up, so another replica may take the job at once.
    pub async fn release_lease(&self, id: &str, owner: &str) -> Result<(), DbErr> {
        bulk_job::Entity::update_many()
            .col_expr(bulk_job::Column::LeaseExpiresAtMicros, Expr::value(0_i64))
            .filter(bulk_job::Column::Id.eq(id))
            .filter(bulk_job::Column::LeaseOwner.eq(owner))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

// === impl JobStore: progress ===

impl JobStore {
    /// Moves a job to `state`, stamping its start the first time it runs.
    pub async fn set_job_state(&self, id: &str, state: JobState) -> Result<(), DbErr> {
        let mut update = bulk_job::Entity::update_many()
            .col_expr(bulk_job::Column::State, Expr::value(state.as_str()))
            .filter(bulk_job::Column::Id.eq(id));
        if state == JobState::Running {
            update = update.col_expr(
                bulk_job::Column::StartedAtMicros,
                Expr::col(bulk_job::Column::StartedAtMicros).if_null(now_micros()),
            );
        }
        update.exec(&self.db).await?;
        Ok(())
    }

    /// Records why a job stopped early (the first stop wins).
    pub async fn set_stop_reason(&self, id: &str, failure: &Failure) -> Result<(), DbErr> {
        bulk_job::Entity::update_many()
            .col_expr(bulk_job::Column::StopCode, Expr::value(failure.code))
            .col_expr(bulk_job::Column::StopReason, Expr::value(failure.reason.as_str()))
            .col_expr(bulk_job::Column::StopMessage, Expr::value(failure.message.as_str()))
            .filter(bulk_job::Column::Id.eq(id))
            .filter(bulk_job::Column::StopCode.eq(0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Writes a job's end and gives its lease up.
    pub async fn finish_job(&self, id: &str, end: &JobEnd) -> Result<(), DbErr> {
        bulk_job::Entity::update_many()
            .col_expr(bulk_job::Column::State, Expr::value(end.state.as_str()))
            .col_expr(bulk_job::Column::RollbackPerformed, Expr::value(end.rollback_performed))
            .col_expr(bulk_job::Column::FinishedAtMicros, Expr::value(now_micros()))
            .col_expr(
                bulk_job::Column::StartedAtMicros,
                Expr::col(bulk_job::Column::StartedAtMicros).if_null(now_micros()),
            )
            .col_expr(bulk_job::Column::LeaseExpiresAtMicros, Expr::value(0_i64))
            .filter(bulk_job::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Persists that the operation on a target is about to be issued, with
    /// the domain's state read just before (SUSPEND and ACTIVATE), in one write.
    pub async fn mark_issued(&self, id: &str, index: i32, prior: Option<DomainState>) -> Result<(), DbErr> {
        update_target(id, index)
            .col_expr(bulk_target::Column::State, Expr::value(TargetState::Issued.as_str()))
            .col_expr(bulk_target::Column::StartedAtMicros, Expr::value(now_micros()))
            .col_expr(bulk_target::Column::PriorState, Expr::value(prior.map_or("", DomainState::as_str)))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Persists a backup's next attempt (its idempotency key changes with it)
    /// and forgets the previous attempt's operation id, before the next call.
    pub async fn set_attempt(&self, id: &str, index: i32, attempt: i32) -> Result<(), DbErr> {
        update_target(id, index)
            .col_expr(bulk_target::Column::Attempt, Expr::value(attempt))
            .col_expr(bulk_target::Column::OperationId, Expr::value(""))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Persists a backup's operation id as soon as VirtualminGateway gave it.
    pub async fn set_operation_id(&self, id: &str, index: i32, operation_id: &str) -> Result<(), DbErr> {
        update_target(id, index)
            .col_expr(bulk_target::Column::OperationId, Expr::value(operation_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Puts an issued target back to pending: Virtualmin shows the call never took effect.
    pub async fn reset_to_pending(&self, id: &str, index: i32) -> Result<(), DbErr> {
        update_target(id, index)
            .col_expr(bulk_target::Column::State, Expr::value(TargetState::Pending.as_str()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Records an operation's outcome as outcome number `finish_seq`.
    pub async fn record_outcome(&self, id: &str, index: i32, outcome: &Outcome, finish_seq: i64) -> Result<(), DbErr> {
        let update = update_target(id, index)
            .col_expr(bulk_target::Column::FinishedAtMicros, Expr::value(now_micros()))
            .col_expr(bulk_target::Column::FinishSeq, Expr::value(finish_seq));
        let update = match outcome {
            Outcome::Succeeded { changed, detail } => update
                .col_expr(bulk_target::Column::State, Expr::value(TargetState::Succeeded.as_str()))
                .col_expr(bulk_target::Column::Changed, Expr::value(*changed))
                .col_expr(bulk_target::Column::Detail, Expr::value(detail.as_str())),
            Outcome::Failed(failure) => update
                .col_expr(bulk_target::Column::State, Expr::value(TargetState::Failed.as_str()))
                .col_expr(bulk_target::Column::ErrorCode, Expr::value(failure.code))
                .col_expr(bulk_target::Column::ErrorReason, Expr::value(failure.reason.as_str()))
                .col_expr(bulk_target::Column::ErrorDomain, Expr::value(failure.domain.as_str()))
                .col_expr(bulk_target::Column::ErrorMessage, Expr::value(failure.message.as_str())),
        };
        update.exec(&self.db).await?;
        Ok(())
    }

    /// Marks every pending target skipped, as outcome number `finish_seq`.
    pub async fn skip_pending(&self, id: &str, finish_seq: i64) -> Result<u64, DbErr> {
        let result = bulk_target::Entity::update_many()
            .col_expr(bulk_target::Column::State, Expr::value(TargetState::Skipped.as_str()))
            .col_expr(bulk_target::Column::FinishedAtMicros, Expr::value(now_micros()))
            .col_expr(bulk_target::Column::FinishSeq, Expr::value(finish_seq))
            .filter(bulk_target::Column::JobId.eq(id))
            .filter(bulk_target::Column::State.eq(TargetState::Pending.as_str()))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// Persists that the undo of a target is about to be issued.
    pub async fn mark_compensation_issued(&self, id: &str, index: i32) -> Result<(), DbErr> {
        update_target(id, index)
            .col_expr(bulk_target::Column::CompensationIssued, Expr::value(true))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Records an undo's outcome: `None` when it succeeded.
    pub async fn record_compensation(
        &self,
        id: &str,
        index: i32,
        failure: Option<&Failure>,
        finish_seq: i64,
    ) -> Result<(), DbErr> {
        let update = update_target(id, index)
            .col_expr(bulk_target::Column::FinishedAtMicros, Expr::value(now_micros()))
            .col_expr(bulk_target::Column::FinishSeq, Expr::value(finish_seq));
        let update = match failure {
            None => update.col_expr(bulk_target::Column::State, Expr::value(TargetState::Compensated.as_str())),
            Some(failure) => update
                .col_expr(bulk_target::Column::State, Expr::value(TargetState::CompensationFailed.as_str()))
                .col_expr(bulk_target::Column::CompensationCode, Expr::value(failure.code))
                .col_expr(bulk_target::Column::CompensationReason, Expr::value(failure.reason.as_str()))
                .col_expr(bulk_target::Column::CompensationMessage, Expr::value(failure.message.as_str())),
        };
        update.exec(&self.db).await?;
        Ok(())
    }
}

/// An update of one target row.
fn update_target(id: &str, index: i32) -> sea_orm::UpdateMany<bulk_target::Entity> {
    bulk_target::Entity::update_many()
        .filter(bulk_target::Column::JobId.eq(id))
        .filter(bulk_target::Column::Idx.eq(index))
}
