//! The stored form of jobs: the `bulk_jobs` and `bulk_targets` entities and
//! the migration that creates them, one SQL text valid on SQLite and
//! PostgreSQL. Instants are `BIGINT` microseconds since the Unix epoch;
//! states are the words of [`crate::model`].
//!
//! A target row is written before its domain is touched (`state = 'issued'`)
//! and again with the outcome; `finish_seq` orders outcomes within a job so
//! WatchJob can send each one once. `prior_state` is the domain's state read
//! before the call (persisted with `issued`), and `changed` says whether the
//! operation changed the domain, so recovery and undo touch only what this job
//! changed.

use sea_orm_migration::prelude::*;

/// The `bulk_jobs` table.
pub mod bulk_job {
    use sea_orm::entity::prelude::*;

    /// One stored job.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bulk_jobs")]
    pub struct Model {
        /// UUID v7 as text.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The caller's idempotency key; unique, `NULL` when none.
        pub idempotency_key: Option<String>,
        /// SHA-256 of the request, to tell a retry from a different request under the same key.
        pub request_fingerprint: String,
        /// `suspend`, `activate`, `backup` or `health_check`.
        pub kind: String,
        /// `atomic` or `best_effort`.
        pub mode: String,
        /// A [`crate::model::JobState`] word.
        pub state: String,
        /// Most targets acted on at once.
        pub max_concurrency: i32,
        /// SUSPEND's reason.
        pub suspend_reason: String,
        /// BACKUP's directory.
        pub backup_directory: String,
        /// The correlation id of the call that started the job; every call the job makes carries it.
        pub correlation_id: String,
        /// Targets of the job.
        pub target_count: i32,
        /// Whether CancelJob was called.
        pub cancel_requested: bool,
        /// Whether completed targets were undone.
        pub rollback_performed: bool,
        /// Why the job stopped early: gRPC code (0 when it did not).
        pub stop_code: i32,
        /// Why the job stopped early: `ErrorInfo` reason.
        pub stop_reason: String,
        /// Why the job stopped early: message.
        pub stop_message: String,
        /// When it was accepted.
        pub created_at_micros: i64,
        /// When a replica first ran it.
        pub started_at_micros: Option<i64>,
        /// When it finished.
        pub finished_at_micros: Option<i64>,
        /// The replica holding the lease.
        pub lease_owner: Option<String>,
        /// When the lease lapses; 0 when never leased.
        pub lease_expires_at_micros: i64,
    }

    /// A job has targets.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `bulk_targets` table.
pub mod bulk_target {
    use sea_orm::entity::prelude::*;

    /// One stored target.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bulk_targets")]
    pub struct Model {
        /// The job.
        #[sea_orm(primary_key, auto_increment = false)]
        pub job_id: String,
        /// Position in the job, from 0.
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i32,
        /// The Virtualmin server id.
        pub server_id: String,
        /// The domain.
        pub domain_name: String,
        /// A [`crate::model::TargetState`] word.
        pub state: String,
        /// Whether the operation changed the domain (so undoing it applies).
        pub changed: bool,
        /// BACKUP: VirtualminGateway's operation id, once known.
        pub operation_id: String,
        /// What the operation left behind (archive path, health finding).
        pub detail: String,
        /// Failure: gRPC code, 0 when none.
        pub error_code: i32,
        /// Failure: `ErrorInfo` reason.
        pub error_reason: String,
        /// Failure: `ErrorInfo` domain.
        pub error_domain: String,
        /// Failure: message.
        pub error_message: String,
        /// Whether the undo call was issued (persisted before the call).
        pub compensation_issued: bool,
        /// Undo failure: gRPC code, 0 when none.
        pub compensation_code: i32,
        /// Undo failure: `ErrorInfo` reason.
        pub compensation_reason: String,
        /// Undo failure: message.
        pub compensation_message: String,
        /// When the operation was issued.
        pub started_at_micros: Option<i64>,
        /// When the last outcome was recorded.
        pub finished_at_micros: Option<i64>,
        /// Order of outcomes within the job; 0 until the first one.
        pub finish_seq: i64,
        /// SUSPEND/ACTIVATE: the domain's state read just before the call, as a
        /// [`crate::model::DomainState`] word, persisted with `issued`; empty
        /// when not read (other kinds, or rows from before this column).
        pub prior_state: String,
        /// BACKUP: which attempt this is, from 0; part of the idempotency key sent
        /// with BackupDomain. Bumped (before the next call) only after an attempt
        /// that certainly did nothing (refused by a rate limit).
        pub attempt: i32,
    }

    /// Targets relate to their job only by `job_id`.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Applies the schema's migrations in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateJobs), Box::new(AddPriorState)]
    }

    fn migration_table_name() -> DynIden {
        "bulkops_migrations".into_iden()
    }
}

/// The first schema: jobs and their targets.
#[derive(Debug, DeriveMigrationName)]
struct CreateJobs;

/// Valid on both SQLite and PostgreSQL as written.
const CREATE_JOBS: [&str; 5] = [
    "CREATE TABLE bulk_jobs (
        id TEXT PRIMARY KEY,
        idempotency_key TEXT UNIQUE,
        request_fingerprint TEXT NOT NULL,
        kind TEXT NOT NULL,
        mode TEXT NOT NULL,
        state TEXT NOT NULL,
        max_concurrency INTEGER NOT NULL,
        suspend_reason TEXT NOT NULL,
        backup_directory TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        target_count INTEGER NOT NULL,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        rollback_performed BOOLEAN NOT NULL DEFAULT FALSE,
        stop_code INTEGER NOT NULL DEFAULT 0,
        stop_reason TEXT NOT NULL DEFAULT '',
        stop_message TEXT NOT NULL DEFAULT '',
        created_at_micros BIGINT NOT NULL,
        started_at_micros BIGINT,
        finished_at_micros BIGINT,
        lease_owner TEXT,
        lease_expires_at_micros BIGINT NOT NULL DEFAULT 0
    )",
    // ListJobs pages newest first by (created, id).
    "CREATE INDEX bulk_jobs_created ON bulk_jobs (created_at_micros, id)",
    // Replicas look for unfinished jobs whose lease has lapsed.
    "CREATE INDEX bulk_jobs_claimable ON bulk_jobs (state, lease_expires_at_micros)",
    "CREATE TABLE bulk_targets (
        job_id TEXT NOT NULL REFERENCES bulk_jobs (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        server_id TEXT NOT NULL,
        domain_name TEXT NOT NULL,
        state TEXT NOT NULL,
        changed BOOLEAN NOT NULL DEFAULT FALSE,
        operation_id TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        error_code INTEGER NOT NULL DEFAULT 0,
        error_reason TEXT NOT NULL DEFAULT '',
        error_domain TEXT NOT NULL DEFAULT '',
        error_message TEXT NOT NULL DEFAULT '',
        compensation_issued BOOLEAN NOT NULL DEFAULT FALSE,
        compensation_code INTEGER NOT NULL DEFAULT 0,
        compensation_reason TEXT NOT NULL DEFAULT '',
        compensation_message TEXT NOT NULL DEFAULT '',
        started_at_micros BIGINT,
        finished_at_micros BIGINT,
        finish_seq BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, idx)
    )",
    // WatchJob reads a job's outcomes after the last one it sent.
    "CREATE INDEX bulk_targets_finished ON bulk_targets (job_id, finish_seq)",
];

/// What each target was before the job acted on it, and the backup attempt.
#[derive(Debug)]
struct AddPriorState;

/// Named by hand: `DeriveMigrationName` names a migration after its file, so a
/// second derived one here would share `CreateJobs`'s name and never run.
impl MigrationName for AddPriorState {
    fn name(&self) -> &'static str {
        "m0002_bulk_targets_prior_state"
    }
}

/// Valid on both SQLite and PostgreSQL as written (one column per statement for SQLite).
const ADD_PRIOR_STATE: [&str; 2] = [
    "ALTER TABLE bulk_targets ADD COLUMN prior_state TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE bulk_targets ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
];

#[async_trait::async_trait]
impl MigrationTrait for AddPriorState {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        for statement in ADD_PRIOR_STATE {
            connection.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateJobs {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        for statement in CREATE_JOBS {
            connection.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
