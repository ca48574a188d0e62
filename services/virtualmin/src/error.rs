//! `VirtualminError`: every way a gateway call can fail, as domain facts, and
//! `ErrorContext`, what the seed's section 3 asks every error to carry
//! (operation, server, time, correlation id, sanitized parameters, version).
//! Messages never hold a credential: secrets are masked before they get here
//! and Virtualmin's own text is cut to its first line and scrubbed.

use std::fmt;
use std::time::{Duration, SystemTime};

use thiserror::Error;

/// The version stamped into every error context.
pub const ERROR_CONTEXT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A failed gateway call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VirtualminError {
    /// No configured server has this id.
    #[error("no configured virtualmin server with id `{server_id}`")]
    UnknownServer { server_id: String },

    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// A value holds a character that would split into extra remote arguments
    /// (a control character such as CR, LF or NUL), or starts with `-`.
    #[error("{field}: control characters and a leading `-` are not allowed")]
    UnsafeValue { field: &'static str },

    /// The page token is not one this service issued for these filters.
    #[error("page_token is invalid or was issued for other filters")]
    InvalidPageToken,

    /// The server does not host this domain.
    #[error("virtual server `{domain}` does not exist")]
    DomainNotFound { domain: String },

    /// The server already hosts this domain.
    #[error("virtual server `{domain}` already exists")]
    DomainAlreadyExists { domain: String },

    /// No backup operation with this id is known (never started, or expired).
    #[error("no backup operation with id `{operation_id}`")]
    OperationNotFound { operation_id: String },

    /// The idempotency key was first used with a different request.
    #[error("idempotency_key was already used for a different request; use a new idempotency_key")]
    IdempotencyKeyReused,

    /// This replica keeps as many idempotency keys as it may; older ones expire first.
    #[error("too many idempotency keys in use (at most {max_keys}); retry later")]
    TooManyIdempotencyKeys { max_keys: usize, retry_after: Duration },

    /// The per-server rate limit is spent for this window.
    #[error("rate limit of {max_calls} calls per {window_secs}s to server `{server_id}` reached")]
    RateLimited { server_id: String, max_calls: u32, window_secs: u64, retry_after: Duration },

    /// Virtualmin refused the configured credentials (401, or its HTML login page).
    #[error("virtualmin rejected the configured credentials of server `{server_id}`")]
    AuthenticationFailed { server_id: String },

    /// miniserv refused the client (403: blocked after failed logins, or not in its allow list).
    #[error("virtualmin server `{server_id}` refused access (HTTP 403)")]
    AccessDenied { server_id: String },

    /// The configured user may not use the remote API.
    #[error("the configured user may not run remote commands on server `{server_id}`")]
    RemoteApiNotAllowed { server_id: String },

    /// The server has no such remote program (older Virtualmin, or missing plugin).
    #[error("server `{server_id}` has no remote program `{program}`")]
    ProgramUnavailable { server_id: String, program: &'static str },

    /// The remote program ran and reported a failure.
    #[error("{program} failed: {message}")]
    ProgramFailed { program: &'static str, message: String },

    /// Virtualmin refused the arguments (a value out of its accepted range).
    #[error("{program} refused the request: {message}")]
    Rejected { program: &'static str, message: String },

    /// The operation did not finish within its configured timeout.
    #[error("{program} on server `{server_id}` timed out after {}s", timeout.as_secs_f64())]
    Timeout { server_id: String, program: &'static str, timeout: Duration },

    /// The request could not be sent within `VIRTUALMIN_WRITE_TIMEOUT`: the server stopped reading it.
    #[error("sending {program} to server `{server_id}` stalled beyond the {}s write timeout", timeout.as_secs_f64())]
    WriteTimeout { server_id: String, program: &'static str, timeout: Duration },

    /// The server could not be reached (connection refused, reset, DNS, TLS).
    #[error("virtualmin server `{server_id}` is unreachable: {detail}")]
    Unreachable { server_id: String, detail: String },

    /// The TLS handshake failed: wrong certificate, pin mismatch, unknown CA.
    #[error("tls handshake with server `{server_id}` failed: {detail}")]
    TlsFailed { server_id: String, detail: String },

    /// miniserv answered an HTTP error status.
    #[error("virtualmin server `{server_id}` answered HTTP {status}")]
    HttpStatus { server_id: String, status: u16 },

    /// The response body exceeded the configured cap; reading stopped there.
    #[error("response exceeded the {limit_bytes}-byte limit")]
    ResponseTooLarge { limit_bytes: u64 },

    /// The connection closed before the JSON document ended.
    #[error("response was truncated after {received_bytes} bytes")]
    TruncatedResponse { received_bytes: usize },

    /// The body is not the JSON Virtualmin sends.
    #[error("response is not valid json: {detail}")]
    MalformedResponse { detail: String },

    /// The body is valid JSON with a field that does not hold what it should.
    #[error("response field `{field}` is malformed: {detail}")]
    MalformedField { field: String, detail: String },

    /// The server answered with a content type Virtualmin never sends.
    #[error("unexpected content type `{content_type}`")]
    UnexpectedContentType { content_type: String },

    /// A failure that is no fault of the request or the server.
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

impl VirtualminError {
    /// Returns the stable, machine-readable reason sent in `ErrorInfo.reason`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownServer { .. } => "SERVER_NOT_FOUND",
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::UnsafeValue { .. } => "UNSAFE_VALUE",
            Self::InvalidPageToken => "INVALID_PAGE_TOKEN",
            Self::DomainNotFound { .. } => "DOMAIN_NOT_FOUND",
            Self::DomainAlreadyExists { .. } => "DOMAIN_ALREADY_EXISTS",
            Self::OperationNotFound { .. } => "OPERATION_NOT_FOUND",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::TooManyIdempotencyKeys { .. } => "TOO_MANY_IDEMPOTENCY_KEYS",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::AuthenticationFailed { .. } => "VIRTUALMIN_AUTH_FAILED",
            Self::AccessDenied { .. } => "VIRTUALMIN_ACCESS_DENIED",
            Self::RemoteApiNotAllowed { .. } => "REMOTE_API_NOT_ALLOWED",
            Self::ProgramUnavailable { .. } => "PROGRAM_UNAVAILABLE",
            Self::ProgramFailed { .. } => "PROGRAM_FAILED",
            Self::Rejected { .. } => "REJECTED_BY_VIRTUALMIN",
            Self::Timeout { .. } => "VIRTUALMIN_TIMEOUT",
            Self::WriteTimeout { .. } => "VIRTUALMIN_WRITE_TIMEOUT",
            Self::Unreachable { .. } => "VIRTUALMIN_UNREACHABLE",
            Self::TlsFailed { .. } => "VIRTUALMIN_TLS_FAILED",
            Self::HttpStatus { .. } => "VIRTUALMIN_HTTP_ERROR",
            Self::ResponseTooLarge { .. } => "RESPONSE_TOO_LARGE",
            Self::TruncatedResponse { .. } => "TRUNCATED_RESPONSE",
            Self::MalformedResponse { .. } => "MALFORMED_RESPONSE",
            Self::MalformedField { .. } => "MALFORMED_FIELD",
            Self::UnexpectedContentType { .. } => "UNEXPECTED_CONTENT_TYPE",
            Self::Internal { .. } => "INTERNAL",
        }
    }

    /// Names the request field at fault, for a `BadRequest` field violation.
    #[must_use]
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidArgument { field, .. } | Self::UnsafeValue { field } => Some(field),
            Self::InvalidPageToken => Some("page_token"),
            Self::IdempotencyKeyReused => Some("idempotency_key"),
            Self::UnknownServer { .. } => Some("server_id"),
            _ => None,
        }
    }

    /// True when sending the same request again may succeed: the failure is
    /// transient and the request may not have been applied.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::WriteTimeout { .. }
            | Self::Unreachable { .. }
            | Self::TruncatedResponse { .. } => true,
            Self::HttpStatus { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// What an error knows about the call that failed (seed section 3). Carried in
/// `ErrorInfo.metadata` and in the log line.
#[derive(Clone, Debug)]
pub struct ErrorContext {
    /// The remote program (`list-domains`), or the RPC when no program ran.
    pub operation: &'static str,
    /// The configured server id.
    pub server_id: String,
    /// Its host name; empty when the id is unknown.
    pub server_hostname: String,
    /// When the call failed.
    pub timestamp: SystemTime,
    /// The call's correlation id; empty outside a call.
    pub correlation_id: String,
    /// The request parameters with secrets masked and long values cut.
    pub sanitized_params: String,
}

impl ErrorContext {
    /// A context stamped now, with the current call's correlation id.
    #[must_use]
    pub fn now(operation: &'static str, server_id: &str, server_hostname: &str, sanitized_params: String) -> Self {
        Self {
            operation,
            server_id: server_id.to_owned(),
            server_hostname: server_hostname.to_owned(),
            timestamp: SystemTime::now(),
            correlation_id: mesh_kit::correlation::current_correlation_id()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            sanitized_params,
        }
    }

    /// The `ErrorInfo.metadata` pairs.
    #[must_use]
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        vec![
            ("operation", self.operation.to_owned()),
            ("server_id", self.server_id.clone()),
            ("server_hostname", self.server_hostname.clone()),
            ("timestamp", humantime::format_rfc3339_millis(self.timestamp).to_string()),
            ("correlation_id", self.correlation_id.clone()),
            ("sanitized_params", self.sanitized_params.clone()),
            ("version", ERROR_CONTEXT_VERSION.to_owned()),
        ]
    }
}

/// An error with the context of the call that produced it.
#[derive(Clone, Debug)]
pub struct CallError {
    /// What went wrong.
    pub error: VirtualminError,
    /// Where and when; boxed to keep `Result<_, CallError>` small.
    pub context: Box<ErrorContext>,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A call that never named a server (GetBackupOperation, or an empty
        // server_id) names only its operation.
        if self.context.server_id.is_empty() {
            write!(f, "{} ({})", self.error, self.context.operation)
        } else {
            write!(f, "{} ({} on server `{}`)", self.error, self.context.operation, self.context.server_id)
        }
    }
}

/// Two call errors are equal when they report the same failure, wherever and whenever it happened.
impl PartialEq for CallError {
    fn eq(&self, other: &Self) -> bool {
        self.error == other.error
    }
}

impl Eq for CallError {}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_facts_without_trailing_period() {
        let errors = [
            VirtualminError::UnknownServer { server_id: "vm9".into() },
            VirtualminError::UnsafeValue { field: "description" },
            VirtualminError::DomainNotFound { domain: "a.com".into() },
            VirtualminError::AuthenticationFailed { server_id: "vm1".into() },
            VirtualminError::ResponseTooLarge { limit_bytes: 1024 },
            VirtualminError::TruncatedResponse { received_bytes: 10 },
            VirtualminError::Timeout { server_id: "vm1".into(), program: "info", timeout: Duration::from_secs(1) },
        ];
        for error in errors {
            let message = error.to_string();
            assert!(!message.chars().next().unwrap().is_uppercase(), "{message}");
            assert!(!message.ends_with('.'), "{message}");
            assert!(error.reason().bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
    }

    fn call_error(error: VirtualminError, operation: &'static str, server_id: &str) -> CallError {
        CallError { error, context: Box::new(ErrorContext::now(operation, server_id, "", String::new())) }
    }

    #[test]
    fn a_call_error_names_its_server_only_when_there_is_one() {
        let unknown = VirtualminError::OperationNotFound { operation_id: "op-1".into() };
        assert_eq!(
            call_error(unknown, "GetBackupOperation", "").to_string(),
            "no backup operation with id `op-1` (GetBackupOperation)"
        );
        let empty = VirtualminError::InvalidArgument { field: "server_id", reason: "must not be empty".into() };
        assert_eq!(call_error(empty, "list-plans", "").to_string(), "server_id: must not be empty (list-plans)");
        let missing = VirtualminError::DomainNotFound { domain: "a.com".into() };
        assert_eq!(
            call_error(missing, "list-domains", "vm1").to_string(),
            "virtual server `a.com` does not exist (list-domains on server `vm1`)"
        );
    }

    #[test]
    fn only_transport_failures_are_transient() {
        let server_id = "vm1".to_owned();
        assert!(VirtualminError::HttpStatus { server_id: server_id.clone(), status: 503 }.is_transient());
        assert!(!VirtualminError::HttpStatus { server_id: server_id.clone(), status: 500 }.is_transient());
        assert!(!VirtualminError::AuthenticationFailed { server_id }.is_transient());
        assert!(!VirtualminError::ProgramFailed { program: "info", message: "x".into() }.is_transient());
    }
}
