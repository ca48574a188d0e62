//! `DockerError`: every way a `DockerOps` operation can fail, as domain facts.
//! Variants carry what a caller needs to act (the id, the limit, the
//! engine's own message) and never a credential: an engine address is shown
//! with any user information removed. `reason` and `field` give the gRPC
//! adapter the `ErrorInfo` reason and the `BadRequest` field.

use std::time::Duration;

use thiserror::Error;

/// A failed `DockerOps` operation, on the whole call or on one container.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DockerError {
    /// A container id or name is empty, too long or has characters the
    /// engine never uses in ids and names.
    #[error("container id `{id}` is not valid: {reason}")]
    InvalidContainerId { id: String, reason: &'static str },

    /// A batch call names no container.
    #[error("{field} must not be empty")]
    EmptyBatch { field: &'static str },

    /// A batch call names more containers than allowed.
    #[error("{count} {field} given, max {max}")]
    BatchTooLarge { field: &'static str, count: usize, max: usize },

    /// The stop timeout is negative or above the configured maximum.
    #[error("invalid stop_timeout: {reason}")]
    InvalidStopTimeout { reason: String },

    /// The CPU sample window is negative or too long.
    #[error("invalid cpu_sample_window: {reason}")]
    InvalidCpuSampleWindow { reason: String },

    /// A label selector is not `key` or `key=value`.
    #[error("label selector `{selector}` is not valid: {reason}")]
    InvalidLabelSelector { selector: String, reason: &'static str },

    /// The page size is negative or above the maximum.
    #[error("page_size {page_size} is not between 0 and {max}")]
    InvalidPageSize { page_size: i32, max: i32 },

    /// The page token was not issued by this service.
    #[error("page_token is not a token from a previous response")]
    InvalidPageToken,

    /// A container spec has an invalid field.
    #[error("invalid {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },

    /// No container has this id or name.
    #[error("no container `{id}`")]
    ContainerNotFound { id: String },

    /// The container exists but lacks the management labels, so this
    /// service may neither read nor change it.
    #[error("container `{id}` is not managed by this service (it lacks the label {required})")]
    NotManaged { id: String, required: String },

    /// The image of a spec is not on the engine (nothing is ever pulled).
    #[error("image `{image}` is not on the engine")]
    ImageNotFound { image: String },

    /// The network a container is to join is not on the engine (the engine
    /// creates such a container, then refuses to start it).
    #[error("network `{network}` is not on the engine")]
    NetworkNotFound { network: String },

    /// Another container already has the name.
    #[error("the container name `{name}` is already in use")]
    NameTaken { name: String },

    /// The engine answered but refused the action, e.g. removing a running
    /// container without `force`, or a container whose process cannot start.
    #[error("the engine refused ({status_code}): {message}")]
    EngineRefused { status_code: u16, message: String },

    /// The engine cannot be reached: no socket, connection refused, or a
    /// broken connection.
    #[error("docker engine at {host} is unreachable: {cause}")]
    EngineUnavailable { host: String, cause: String },

    /// The engine did not answer in time.
    #[error("docker engine at {host} did not answer within {after:?}")]
    EngineTimeout { host: String, after: Duration },

    /// A failure that is no fault of the request, such as an engine answer
    /// that cannot be decoded. The adapter logs `reason` and sends the caller
    /// a generic message.
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

impl DockerError {
    /// Returns the stable, machine-readable reason sent in `ErrorInfo.reason`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidContainerId { .. } => "INVALID_CONTAINER_ID",
            Self::EmptyBatch { .. } => "EMPTY_BATCH",
            Self::BatchTooLarge { .. } => "BATCH_TOO_LARGE",
            Self::InvalidStopTimeout { .. } => "INVALID_STOP_TIMEOUT",
            Self::InvalidCpuSampleWindow { .. } => "INVALID_CPU_SAMPLE_WINDOW",
            Self::InvalidLabelSelector { .. } => "INVALID_LABEL_SELECTOR",
            Self::InvalidPageSize { .. } => "INVALID_PAGE_SIZE",
            Self::InvalidPageToken => "INVALID_PAGE_TOKEN",
            Self::InvalidSpec { .. } => "INVALID_CONTAINER_SPEC",
            Self::ContainerNotFound { .. } => "CONTAINER_NOT_FOUND",
            Self::NotManaged { .. } => "CONTAINER_NOT_MANAGED",
            Self::ImageNotFound { .. } => "IMAGE_NOT_FOUND",
            Self::NetworkNotFound { .. } => "NETWORK_NOT_FOUND",
            Self::NameTaken { .. } => "CONTAINER_NAME_TAKEN",
            Self::EngineRefused { .. } => "ENGINE_REFUSED",
            Self::EngineUnavailable { .. } => "ENGINE_UNAVAILABLE",
            Self::EngineTimeout { .. } => "ENGINE_TIMEOUT",
            Self::Internal { .. } => "INTERNAL",
        }
    }

    /// Names the request field at fault, for a `BadRequest` field violation.
    /// `None` when no single field is to blame.
    #[must_use]
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidContainerId { .. } => Some("container_ids"),
            Self::EmptyBatch { field } | Self::BatchTooLarge { field, .. } | Self::InvalidSpec { field, .. } => {
                Some(field)
            }
            Self::InvalidStopTimeout { .. } => Some("stop_timeout"),
            Self::InvalidCpuSampleWindow { .. } => Some("cpu_sample_window"),
            Self::InvalidLabelSelector { .. } => Some("label_selectors"),
            Self::InvalidPageSize { .. } => Some("page_size"),
            Self::InvalidPageToken => Some("page_token"),
            Self::ImageNotFound { .. } => Some("specs.image"),
            Self::NameTaken { .. } => Some("specs.name"),
            // Not `specs.network_mode`: a StartContainers call meets it too.
            Self::ContainerNotFound { .. }
            | Self::NetworkNotFound { .. }
            | Self::NotManaged { .. }
            | Self::EngineRefused { .. }
            | Self::EngineUnavailable { .. }
            | Self::EngineTimeout { .. }
            | Self::Internal { .. } => None,
        }
    }

    /// Whether the engine could not be reached, as opposed to refusing.
    #[must_use]
    pub fn is_engine_unreachable(&self) -> bool {
        matches!(self, Self::EngineUnavailable { .. } | Self::EngineTimeout { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_facts_without_trailing_period() {
        let errors = [
            DockerError::InvalidContainerId { id: "a/b".into(), reason: "has a character other than [A-Za-z0-9_.-]" },
            DockerError::EmptyBatch { field: "container_ids" },
            DockerError::BatchTooLarge { field: "container_ids", count: 200, max: 100 },
            DockerError::InvalidStopTimeout { reason: "must not be negative".into() },
            DockerError::InvalidCpuSampleWindow { reason: "must not be negative".into() },
            DockerError::InvalidLabelSelector { selector: "=x".into(), reason: "the key is empty" },
            DockerError::InvalidPageSize { page_size: -1, max: 1000 },
            DockerError::InvalidPageToken,
            DockerError::InvalidSpec { field: "specs.image", reason: "must not be empty".into() },
            DockerError::ContainerNotFound { id: "abc".into() },
            DockerError::NotManaged { id: "abc".into(), required: "mesh.managed=true".into() },
            DockerError::ImageNotFound { image: "nginx:1".into() },
            DockerError::NetworkNotFound { network: "backend".into() },
            DockerError::NameTaken { name: "web".into() },
            DockerError::EngineRefused { status_code: 409, message: "container is running".into() },
            DockerError::EngineUnavailable { host: "unix:///x".into(), cause: "socket not found".into() },
            DockerError::EngineTimeout { host: "unix:///x".into(), after: Duration::from_secs(5) },
            DockerError::Internal { reason: "bad json".into() },
        ];
        for error in errors {
            let message = error.to_string();
            let first = message.chars().next().expect("messages are not empty");
            assert!(!first.is_uppercase(), "{message}");
            assert!(!message.ends_with('.'), "{message}");
            assert!(error.reason().chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{}", error.reason());
        }
    }

    #[test]
    fn field_names_the_request_field() {
        assert_eq!(DockerError::EmptyBatch { field: "specs" }.field(), Some("specs"));
        assert_eq!(DockerError::InvalidPageToken.field(), Some("page_token"));
        assert_eq!(DockerError::ContainerNotFound { id: "x".into() }.field(), None);
        assert!(DockerError::EngineTimeout { host: "h".into(), after: Duration::ZERO }.is_engine_unreachable());
        assert!(!DockerError::EngineRefused { status_code: 500, message: String::new() }.is_engine_unreachable());
    }
}
