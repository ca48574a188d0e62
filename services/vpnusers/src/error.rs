//! `VpnUsersError`: every way a VpnUsers operation can fail, as domain facts.
//! Messages name the field at fault and the accepted range; they repeat a
//! username (never secret) but never a database URL or SQL. `reason` and
//! `field` give the gRPC adapter the `ErrorInfo` reason and the `BadRequest`
//! field; the status code is chosen in `grpc.rs`.

use sea_orm::DbErr;
use thiserror::Error;
use uuid::Uuid;

/// A failed VpnUsers operation.
#[derive(Debug, Error)]
pub enum VpnUsersError {
    /// A batch holds more items than `max_batch_size` (or `max_bulk_ids`).
    #[error("{field} holds {count} items, max {max}")]
    BatchTooLarge { field: &'static str, count: usize, max: usize },

    /// The username breaks the naming rules.
    #[error("invalid username: {reason}")]
    InvalidUsername { reason: String },

    /// The email is not a plausible address.
    #[error("invalid email: {reason}")]
    InvalidEmail { reason: String },

    /// The note is too long or holds NUL.
    #[error("invalid note: {reason}")]
    InvalidNote { reason: String },

    /// A byte count does not fit the store's signed 64-bit column.
    #[error("{field} must be at most 9223372036854775807")]
    TrafficOutOfRange { field: &'static str },

    /// A timestamp has out-of-range nanos or lies beyond what the store holds.
    #[error("{field} is not a valid timestamp")]
    InvalidTimestamp { field: &'static str },

    /// A status is unset where one is required, or not a known value.
    #[error("{field} is not a known user status")]
    InvalidStatus { field: &'static str },

    /// A protocol is unset where one is required, or not a known value.
    #[error("{field} is not a known vpn protocol")]
    InvalidProtocol { field: &'static str },

    /// A user id is not a UUID.
    #[error("{field} is not a uuid")]
    InvalidId { field: &'static str },

    /// The same id appears twice in one batch.
    #[error("id {id} appears more than once in the batch")]
    DuplicateId { id: Uuid },

    /// An update names no field to change.
    #[error("update_mask names no field to change")]
    EmptyUpdate,

    /// An update mask names a field that cannot be changed.
    #[error("update_mask path `{path}` is not an updatable field")]
    InvalidUpdateMask { path: String },

    /// Another user already has this username.
    #[error("username `{username}` is taken")]
    UsernameTaken { username: String },

    /// The same username appears twice in one batch.
    #[error("username `{username}` appears more than once in the batch")]
    DuplicateUsernameInBatch { username: String },

    /// No user has this id.
    #[error("no user with id {id}")]
    UserNotFound { id: Uuid },

    /// `page_size` (or `chunk_size`) is negative or above the maximum.
    #[error("{field} must be between 0 and {max} (got {requested})")]
    InvalidPageSize { field: &'static str, requested: i64, max: u32 },

    /// `page_number` is negative.
    #[error("page_number must not be negative (got {requested})")]
    InvalidPageNumber { requested: i64 },

    /// The page token was not issued by this service for this query.
    #[error("page_token was not issued for this query or was altered")]
    InvalidPageToken,

    /// A filter is contradictory or malformed.
    #[error("invalid filter {field}: {reason}")]
    InvalidFilter { field: &'static str, reason: String },

    /// A bulk change was given a filter that matches every user.
    #[error("filter is empty and would match every user; name ids or set a filter field")]
    EmptyFilter,

    /// A bulk change names neither ids nor a filter.
    #[error("give either ids or filter")]
    MissingSelector,

    /// The search text is empty or too long.
    #[error("invalid query: {reason}")]
    InvalidSearchQuery { reason: String },

    /// `signup_days` is out of range.
    #[error("signup_days must be between 0 and 366 (got {requested})")]
    InvalidSignupDays { requested: i64 },

    /// `request_id` is too long or holds characters other than printable ASCII.
    #[error("invalid request_id: {reason}")]
    InvalidRequestId { reason: String },

    /// `request_id` already answered a different request (or another RPC)
    /// that has not expired; the caller must pick a new key.
    #[error("request_id was already used for a different request; use a new request_id")]
    RequestIdReused,

    /// A stored response of an idempotent call could not be read back.
    #[error("stored response of request_id is unreadable")]
    CorruptStoredResponse,

    /// One item of an ALL_OR_NOTHING batch failed, so nothing was written.
    #[error("item {index} refused, nothing was written: {source}")]
    BatchItemFailed { index: usize, source: Box<VpnUsersError> },

    /// The database could not be reached; retrying later may help.
    #[error("database unavailable")]
    DatabaseUnavailable { source: DbErr },

    /// The database failed a statement.
    #[error("database error")]
    Database { source: DbErr },

    /// A stored row holds a value the service never writes.
    #[error("stored row is malformed: {reason}")]
    CorruptRow { reason: String },
}

impl From<DbErr> for VpnUsersError {
    fn from(source: DbErr) -> Self {
        match source {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => Self::DatabaseUnavailable { source },
            other => Self::Database { source: other },
        }
    }
}

impl VpnUsersError {
    /// Returns the stable, machine-readable reason sent in `ErrorInfo.reason`.
    /// A failed batch item reports its own reason.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BatchTooLarge { .. } => "BATCH_TOO_LARGE",
            Self::InvalidUsername { .. } => "INVALID_USERNAME",
            Self::InvalidEmail { .. } => "INVALID_EMAIL",
            Self::InvalidNote { .. } => "INVALID_NOTE",
            Self::TrafficOutOfRange { .. } => "TRAFFIC_OUT_OF_RANGE",
            Self::InvalidTimestamp { .. } => "INVALID_TIMESTAMP",
            Self::InvalidStatus { .. } => "INVALID_STATUS",
            Self::InvalidProtocol { .. } => "INVALID_PROTOCOL",
            Self::InvalidId { .. } => "INVALID_ID",
            Self::DuplicateId { .. } => "DUPLICATE_ID",
            Self::EmptyUpdate => "EMPTY_UPDATE",
            Self::InvalidUpdateMask { .. } => "INVALID_UPDATE_MASK",
            Self::UsernameTaken { .. } => "USERNAME_TAKEN",
            Self::DuplicateUsernameInBatch { .. } => "DUPLICATE_USERNAME",
            Self::UserNotFound { .. } => "USER_NOT_FOUND",
            Self::InvalidPageSize { .. } => "INVALID_PAGE_SIZE",
            Self::InvalidPageNumber { .. } => "INVALID_PAGE_NUMBER",
            Self::InvalidPageToken => "INVALID_PAGE_TOKEN",
            Self::InvalidFilter { .. } => "INVALID_FILTER",
            Self::EmptyFilter => "EMPTY_FILTER",
            Self::MissingSelector => "MISSING_SELECTOR",
            Self::InvalidSearchQuery { .. } => "INVALID_QUERY",
            Self::InvalidSignupDays { .. } => "INVALID_SIGNUP_DAYS",
            Self::InvalidRequestId { .. } => "INVALID_REQUEST_ID",
            Self::RequestIdReused => "REQUEST_ID_REUSED",
            Self::CorruptStoredResponse => "CORRUPT_STORED_RESPONSE",
            Self::BatchItemFailed { source, .. } => source.reason(),
            Self::DatabaseUnavailable { .. } => "DATABASE_UNAVAILABLE",
            Self::Database { .. } => "STORAGE_FAILED",
            Self::CorruptRow { .. } => "CORRUPT_ROW",
        }
    }

    /// Names the request field at fault, for a `BadRequest` field violation.
    /// `None` when no single field is to blame.
    #[must_use]
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::BatchTooLarge { field, .. }
            | Self::TrafficOutOfRange { field }
            | Self::InvalidTimestamp { field }
            | Self::InvalidStatus { field }
            | Self::InvalidProtocol { field }
            | Self::InvalidId { field }
            | Self::InvalidPageSize { field, .. }
            | Self::InvalidFilter { field, .. } => Some(field),
            Self::InvalidUsername { .. } | Self::UsernameTaken { .. } | Self::DuplicateUsernameInBatch { .. } => {
                Some("username")
            }
            Self::InvalidEmail { .. } => Some("email"),
            Self::InvalidNote { .. } => Some("note"),
            Self::DuplicateId { .. } | Self::UserNotFound { .. } => Some("id"),
            Self::EmptyUpdate | Self::InvalidUpdateMask { .. } => Some("update_mask"),
            Self::InvalidPageNumber { .. } => Some("page_number"),
            Self::InvalidPageToken => Some("page_token"),
            Self::EmptyFilter => Some("filter"),
            Self::MissingSelector => Some("selector"),
            Self::InvalidSearchQuery { .. } => Some("query"),
            Self::InvalidSignupDays { .. } => Some("signup_days"),
            Self::InvalidRequestId { .. } | Self::RequestIdReused => Some("request_id"),
            Self::BatchItemFailed { source, .. } => source.field(),
            Self::DatabaseUnavailable { .. }
            | Self::Database { .. }
            | Self::CorruptRow { .. }
            | Self::CorruptStoredResponse => None,
        }
    }

    /// The error itself, or the item's error of a failed ALL_OR_NOTHING batch.
    #[must_use]
    pub fn root(&self) -> &Self {
        match self {
            Self::BatchItemFailed { source, .. } => source.root(),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_facts_without_trailing_period() {
        let errors = [
            VpnUsersError::BatchTooLarge { field: "users", count: 101, max: 100 },
            VpnUsersError::InvalidUsername { reason: "must not be empty".into() },
            VpnUsersError::InvalidEmail { reason: "must be local@domain".into() },
            VpnUsersError::InvalidPageSize { field: "page_size", requested: 1_000_000_000, max: 1000 },
            VpnUsersError::InvalidPageToken,
            VpnUsersError::UsernameTaken { username: "alice".into() },
            VpnUsersError::EmptyFilter,
            VpnUsersError::Database { source: DbErr::Custom("boom".into()) },
        ];
        for error in errors {
            let message = error.to_string();
            assert!(!message.chars().next().unwrap().is_uppercase(), "{message}");
            assert!(!message.ends_with('.'), "{message}");
            assert!(error.reason().chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        }
    }

    #[test]
    fn a_failed_item_reports_its_own_reason_and_field() {
        let error = VpnUsersError::BatchItemFailed {
            index: 3,
            source: Box::new(VpnUsersError::UsernameTaken { username: "bob".into() }),
        };
        assert_eq!(error.reason(), "USERNAME_TAKEN");
        assert_eq!(error.field(), Some("username"));
        assert_eq!(error.to_string(), "item 3 refused, nothing was written: username `bob` is taken");
        assert_eq!(
            VpnUsersError::BatchTooLarge { field: "users", count: 101, max: 100 }.to_string(),
            "users holds 101 items, max 100"
        );
    }

    #[test]
    fn the_database_message_never_carries_the_driver_text() {
        let error = VpnUsersError::from(DbErr::Conn(sea_orm::RuntimeErr::Internal(
            "postgres://admin:hunter2@db/users refused".into(),
        )));
        assert_eq!(error.reason(), "DATABASE_UNAVAILABLE");
        assert!(!error.to_string().contains("hunter2"));
    }
}
