//! `BulkOpsError`: every way a BulkOps call can fail, with its gRPC code,
//! `ErrorInfo` reason and offending request field. Failures of single
//! targets are not errors of the call: they are recorded on the target as a
//! [`crate::model::Failure`].

use mesh_kit::RpcError;
use sea_orm::DbErr;
use thiserror::Error;
use tonic::Code;

/// The `ErrorInfo` domain of this service's errors.
pub const ERROR_DOMAIN: &str = "mesh.bulkops.v1";

/// A failed BulkOps call.
#[derive(Debug, Error)]
pub enum BulkOpsError {
    /// `kind` is unset or unknown.
    #[error("kind must be SUSPEND, ACTIVATE, BACKUP or HEALTH_CHECK")]
    MissingKind,
    /// Neither a target list nor a selector was given.
    #[error("target_set is required: a target_list (possibly empty) or a selector")]
    MissingTargets,
    /// A target is malformed.
    #[error("{field}: {reason}")]
    InvalidTarget { field: &'static str, reason: String },
    /// The same (server, domain) appears twice.
    #[error("target {server_id}/{domain_name} appears more than once")]
    DuplicateTarget { server_id: String, domain_name: String },
    /// More targets than `max_targets`.
    #[error("the job has {count} targets, max {max}")]
    TooManyTargets { count: usize, max: usize },
    /// `max_concurrency` above the service's cap.
    #[error("max_concurrency {asked} is above the service's limit of {max}")]
    ConcurrencyTooHigh { asked: u32, max: u32 },
    /// A BACKUP job without a usable `options.backup_directory`.
    #[error("options.backup_directory must be an absolute path without control characters for BACKUP")]
    InvalidBackupDirectory,
    /// The idempotency key is too long or holds control characters.
    #[error("idempotency_key must be at most 128 printable characters")]
    InvalidIdempotencyKey,
    /// A target or selector names a server VirtualminGateway does not know.
    #[error("server `{server_id}` is not configured in VirtualminGateway")]
    UnknownServer { field: &'static str, server_id: String },
    /// The idempotency key names a job started with a different request.
    #[error("idempotency_key was used for job {job_id} with a different request")]
    IdempotencyKeyReused { job_id: String },
    /// A job id that is not a UUID.
    #[error("job_id is not a uuid")]
    InvalidJobId,
    /// No job has this id.
    #[error("job {job_id} does not exist")]
    JobNotFound { job_id: String },
    /// A page token that this service did not issue.
    #[error("page_token is not a token from a previous ListJobs response")]
    InvalidPageToken,
    /// A page size above the maximum.
    #[error("page_size must be at most {max}")]
    PageSizeTooLarge { max: u32 },
    /// VirtualminGateway refused or failed a call made to resolve the request.
    #[error("VirtualminGateway: {message}")]
    Virtualmin { code: Code, message: String },
    /// The database failed.
    #[error("database error: {source}")]
    Database {
        #[from]
        source: DbErr,
    },
    /// A stored row holds a value this version cannot read.
    #[error("corrupt stored row: {reason}")]
    CorruptRow { reason: String },
}

impl BulkOpsError {
    /// A VirtualminGateway status as this service's error.
    #[must_use]
    pub fn from_virtualmin(status: &tonic::Status) -> Self {
        Self::Virtualmin { code: status.code(), message: status.message().to_owned() }
    }
}

impl RpcError for BulkOpsError {
    fn code(&self) -> Code {
        match self {
            Self::MissingKind
            | Self::MissingTargets
            | Self::InvalidTarget { .. }
            | Self::DuplicateTarget { .. }
            | Self::TooManyTargets { .. }
            | Self::ConcurrencyTooHigh { .. }
            | Self::InvalidBackupDirectory
            | Self::InvalidIdempotencyKey
            | Self::UnknownServer { .. }
            | Self::InvalidJobId
            | Self::InvalidPageToken
            | Self::PageSizeTooLarge { .. } => Code::InvalidArgument,
            Self::IdempotencyKeyReused { .. } => Code::FailedPrecondition,
            Self::JobNotFound { .. } => Code::NotFound,
            // Whatever VirtualminGateway said, except that its own internal
            // failures are this call's dependency being unavailable.
            Self::Virtualmin { code, .. } => match code {
                Code::Internal | Code::Unknown => Code::Unavailable,
                other => *other,
            },
            Self::Database { .. } | Self::CorruptRow { .. } => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::MissingKind => "KIND_REQUIRED",
            Self::MissingTargets => "TARGETS_REQUIRED",
            Self::InvalidTarget { .. } => "INVALID_TARGET",
            Self::DuplicateTarget { .. } => "DUPLICATE_TARGET",
            Self::TooManyTargets { .. } => "TOO_MANY_TARGETS",
            Self::ConcurrencyTooHigh { .. } => "CONCURRENCY_TOO_HIGH",
            Self::InvalidBackupDirectory => "INVALID_BACKUP_DIRECTORY",
            Self::InvalidIdempotencyKey => "INVALID_IDEMPOTENCY_KEY",
            Self::UnknownServer { .. } => "UNKNOWN_SERVER",
            Self::IdempotencyKeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
            Self::InvalidJobId => "INVALID_JOB_ID",
            Self::JobNotFound { .. } => "JOB_NOT_FOUND",
            Self::InvalidPageToken => "INVALID_PAGE_TOKEN",
            Self::PageSizeTooLarge { .. } => "PAGE_SIZE_TOO_LARGE",
            Self::Virtualmin { .. } => "VIRTUALMIN_CALL_FAILED",
            Self::Database { .. } => "DATABASE_ERROR",
            Self::CorruptRow { .. } => "CORRUPT_ROW",
        }
    }

    fn domain(&self) -> &'static str {
        ERROR_DOMAIN
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            Self::MissingKind => Some("kind"),
            Self::MissingTargets => Some("target_set"),
            Self::InvalidTarget { field, .. } | Self::UnknownServer { field, .. } => Some(field),
            Self::DuplicateTarget { .. } | Self::TooManyTargets { .. } => Some("target_list.targets"),
            Self::ConcurrencyTooHigh { .. } => Some("max_concurrency"),
            Self::InvalidBackupDirectory => Some("options.backup_directory"),
            Self::InvalidIdempotencyKey => Some("idempotency_key"),
            Self::InvalidJobId => Some("job_id"),
            Self::InvalidPageToken => Some("page_token"),
            Self::PageSizeTooLarge { .. } => Some("page_size"),
            _ => None,
        }
    }
}
