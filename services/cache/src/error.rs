//! `CacheError`: every way a cache operation can fail, as domain facts.
//! Variants carry what a caller needs to fix the request (sizes, limits, the
//! offending key) and never the value bytes. The gRPC adapter maps each variant
//! to a status code; `reason` and `field` give it the `ErrorInfo` reason and the
//! `BadRequest` field without a second table.

use thiserror::Error;

/// A failed cache operation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CacheError {
    /// The key is the empty string.
    #[error("key must not be empty")]
    EmptyKey,

    /// The key is longer than the configured limit.
    #[error("key is {size_bytes} bytes, max {max_bytes}")]
    KeyTooLarge { size_bytes: usize, max_bytes: usize },

    /// The value, with its key and tags, does not fit the limits.
    /// `max_bytes` is the largest value that would have been accepted.
    #[error("value is {size_bytes} bytes, max {max_bytes}")]
    ValueTooLarge { size_bytes: usize, max_bytes: usize },

    /// The entry carries more tags than allowed.
    #[error("{count} tags given, max {max}")]
    TooManyTags { count: usize, max: usize },

    /// One tag is longer than allowed.
    #[error("tag is {size_bytes} bytes, max {max_bytes}")]
    TagTooLarge { size_bytes: usize, max_bytes: usize },

    /// The time to live is zero, negative or too large to represent.
    #[error("invalid ttl: {reason}")]
    InvalidTtl { reason: String },

    /// The key pattern is empty, too long or not valid glob/regex syntax.
    #[error("invalid pattern: {reason}")]
    InvalidPattern { reason: String },

    /// The regex compiles to more than the allowed program size.
    #[error("pattern compiles to more than {limit_bytes} bytes")]
    PatternTooComplex { limit_bytes: usize },

    /// A set named a lease that is unknown, expired or held by another caller.
    /// The message leaves the key out: keys can embed session ids or tokens.
    #[error("no live lease with that id for this key")]
    LeaseNotFound { key: String },

    /// The lease table is full; leases expire on their own, so retrying later helps.
    #[error("too many outstanding leases, max {max}")]
    TooManyLeases { max: usize },

    /// A batch names more keys than allowed.
    #[error("{count} keys given, max {max}")]
    TooManyKeys { count: usize, max: usize },

    /// A failure that is no fault of the request, such as a panicked worker.
    /// The adapter logs `reason` and sends the caller a generic message.
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

impl CacheError {
    /// Returns the stable, machine-readable reason sent in `ErrorInfo.reason`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::EmptyKey => "EMPTY_KEY",
            Self::KeyTooLarge { .. } => "KEY_TOO_LARGE",
            Self::ValueTooLarge { .. } => "VALUE_TOO_LARGE",
            Self::TooManyTags { .. } => "TOO_MANY_TAGS",
            Self::TagTooLarge { .. } => "TAG_TOO_LARGE",
            Self::InvalidTtl { .. } => "INVALID_TTL",
            Self::InvalidPattern { .. } => "INVALID_PATTERN",
            Self::PatternTooComplex { .. } => "PATTERN_TOO_COMPLEX",
            Self::LeaseNotFound { .. } => "LEASE_NOT_FOUND",
            Self::TooManyLeases { .. } => "TOO_MANY_LEASES",
            Self::TooManyKeys { .. } => "TOO_MANY_KEYS",
            Self::Internal { .. } => "INTERNAL",
        }
    }

    /// Names the request field at fault, for a `BadRequest` field violation.
    /// `None` when no single field is to blame.
    #[must_use]
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::EmptyKey | Self::KeyTooLarge { .. } => Some("key"),
            Self::ValueTooLarge { .. } => Some("value"),
            Self::TooManyTags { .. } | Self::TagTooLarge { .. } => Some("tags"),
            Self::InvalidTtl { .. } => Some("ttl"),
            Self::InvalidPattern { .. } | Self::PatternTooComplex { .. } => Some("pattern"),
            Self::LeaseNotFound { .. } => Some("lease_id"),
            Self::TooManyKeys { .. } => Some("keys"),
            Self::TooManyLeases { .. } | Self::Internal { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_facts_without_trailing_period() {
        let errors = [
            CacheError::EmptyKey,
            CacheError::KeyTooLarge { size_bytes: 2048, max_bytes: 1024 },
            CacheError::ValueTooLarge { size_bytes: 9, max_bytes: 8 },
            CacheError::TooManyTags { count: 40, max: 32 },
            CacheError::TagTooLarge { size_bytes: 300, max_bytes: 256 },
            CacheError::InvalidTtl { reason: "ttl must be positive".into() },
            CacheError::InvalidPattern { reason: "pattern is empty".into() },
            CacheError::PatternTooComplex { limit_bytes: 1 << 20 },
            CacheError::LeaseNotFound { key: "user:1".into() },
            CacheError::TooManyLeases { max: 100_000 },
            CacheError::TooManyKeys { count: 2000, max: 1000 },
            CacheError::Internal { reason: "worker panicked".into() },
        ];
        for error in errors {
            let message = error.to_string();
            let first = message.chars().next().expect("messages are not empty");
            assert!(!first.is_uppercase(), "{message}");
            assert!(!message.ends_with('.'), "{message}");
            assert!(error.reason().chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        }
    }

    #[test]
    fn field_names_the_request_field() {
        assert_eq!(CacheError::EmptyKey.field(), Some("key"));
        assert_eq!(CacheError::ValueTooLarge { size_bytes: 9, max_bytes: 8 }.field(), Some("value"));
        assert_eq!(CacheError::LeaseNotFound { key: "k".into() }.field(), Some("lease_id"));
        assert_eq!(CacheError::TooManyLeases { max: 1 }.field(), None);
        assert_eq!(
            CacheError::KeyTooLarge { size_bytes: 2048, max_bytes: 1024 }.to_string(),
            "key is 2048 bytes, max 1024"
        );
    }
}
