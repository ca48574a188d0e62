//! `MemoryProfilerError`: every way a profiler call can fail, as domain
//! facts. `grpc` gives each its code; `reason` and `field` give the
//! `ErrorInfo` reason and the `BadRequest` field without a second table.

use thiserror::Error;

/// A failed profiler call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemoryProfilerError {
    /// The request names a service the profiler does not watch.
    #[error("service `{service}` is not watched; see MESH_MEMORY_TARGETS")]
    UnknownService { service: String },
    /// A call that needs a service named none.
    #[error("service must not be empty")]
    ServiceRequired,
    /// No kept snapshot has this id (it never existed or was dropped past `max_snapshots`).
    #[error("no kept snapshot has id {snapshot_id}")]
    SnapshotNotFound { snapshot_id: u64, field: &'static str },
    /// The two snapshots to compare belong to different services.
    #[error("snapshots belong to different services (`{from_service}` and `{to_service}`)")]
    DifferentServices { from_service: String, to_service: String },
    /// The page size is negative or above the cap.
    #[error("page_size must be between 0 and {max} (got {page_size})")]
    InvalidPageSize { page_size: i32, max: i32 },
    /// The page token was not issued by this server.
    #[error("page_token is not a token this server issued")]
    InvalidPageToken,
    /// A watched service did not answer its probe; reported per snapshot.
    #[error("service `{service}` is unreachable: {reason}")]
    TargetUnreachable { service: String, reason: String },
}

impl MemoryProfilerError {
    /// Returns the stable, machine-readable reason sent in `ErrorInfo.reason`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownService { .. } => "UNKNOWN_SERVICE",
            Self::ServiceRequired => "SERVICE_REQUIRED",
            Self::SnapshotNotFound { .. } => "SNAPSHOT_NOT_FOUND",
            Self::DifferentServices { .. } => "SNAPSHOTS_OF_DIFFERENT_SERVICES",
            Self::InvalidPageSize { .. } => "INVALID_PAGE_SIZE",
            Self::InvalidPageToken => "INVALID_PAGE_TOKEN",
            Self::TargetUnreachable { .. } => "TARGET_UNREACHABLE",
        }
    }

    /// Names the request field at fault, for a `BadRequest` field violation.
    #[must_use]
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::UnknownService { .. } | Self::ServiceRequired => Some("service"),
            Self::SnapshotNotFound { field, .. } => Some(field),
            Self::DifferentServices { .. } => Some("to_snapshot_id"),
            Self::InvalidPageSize { .. } => Some("page_size"),
            Self::InvalidPageToken => Some("page_token"),
            Self::TargetUnreachable { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_facts_and_reasons_upper_snake() {
        let errors = [
            MemoryProfilerError::UnknownService { service: "x".into() },
            MemoryProfilerError::ServiceRequired,
            MemoryProfilerError::SnapshotNotFound { snapshot_id: 7, field: "from_snapshot_id" },
            MemoryProfilerError::DifferentServices { from_service: "a".into(), to_service: "b".into() },
            MemoryProfilerError::InvalidPageSize { page_size: -1, max: 1000 },
            MemoryProfilerError::InvalidPageToken,
            MemoryProfilerError::TargetUnreachable { service: "a".into(), reason: "refused".into() },
        ];
        for error in errors {
            let message = error.to_string();
            assert!(!message.starts_with(char::is_uppercase) && !message.ends_with('.'), "{message}");
            assert!(error.reason().chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        }
    }
}
