//! Idempotency keys of the batch writes (a request's `request_id`): what a
//! valid key is, the fingerprint that tells a retry from a different request,
//! and what a keyed write returns.
//!
//! The store keeps each key with its fingerprint and the encoded response in
//! the transaction of the write it guards, so a key is stored if and only if
//! its write committed: a retry after a lost response is answered from the
//! stored bytes and writes nothing; a retry of a call that failed as a whole
//! finds no key and runs again. Encoding the response is the caller's job, so
//! the store never sees wire types.

use sha2::{Digest, Sha256};

use crate::error::VpnUsersError;

/// Longest `request_id`, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A valid `request_id` and the fingerprint of the request it came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    request_sha256: [u8; 32],
}

impl IdempotencyKey {
    /// The key of a request, or `None` when `request_id` is empty. The
    /// fingerprint covers `operation` (the RPC name, so one key cannot stand
    /// for two kinds of write) and `request_bytes`, the request as encoded
    /// without its key.
    pub fn parse(request_id: String, operation: &str, request_bytes: &[u8]) -> Result<Option<Self>, VpnUsersError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        if request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(VpnUsersError::InvalidRequestId {
                reason: format!("must be at most {MAX_REQUEST_ID_BYTES} bytes"),
            });
        }
        // Printable ASCII keeps keys loggable and equal on both databases
        // (no collation or normalisation question).
        if !request_id.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(VpnUsersError::InvalidRequestId {
                reason: "must hold only printable ASCII characters without spaces".to_owned(),
            });
        }
        let mut hasher = Sha256::new();
        hasher.update(operation.as_bytes());
        // A separator no RPC name holds, so name and body cannot run together.
        hasher.update([0]);
        hasher.update(request_bytes);
        Ok(Some(Self { key: request_id, request_sha256: hasher.finalize().into() }))
    }

    /// The caller's key.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The SHA-256 of the operation and the request.
    #[must_use]
    pub fn request_sha256(&self) -> &[u8; 32] {
        &self.request_sha256
    }
}

/// A key as the store records it: with its expiry.
#[derive(Clone, Copy, Debug)]
pub struct IdempotencyClaim<'a> {
    /// The key and its fingerprint.
    pub key: &'a IdempotencyKey,
    /// When the key is forgotten, in Unix microseconds.
    pub expires_at_micros: i64,
}

/// What a write under an idempotency key returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Written<T> {
    /// The write ran now; this is its response.
    Done(T),
    /// The key already answered this request: the stored encoded response.
    Replayed(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(request_id: &str, operation: &str, body: &[u8]) -> Option<IdempotencyKey> {
        IdempotencyKey::parse(request_id.to_owned(), operation, body).unwrap()
    }

    #[test]
    fn an_empty_request_id_means_no_key() {
        assert_eq!(key("", "CreateUsers", b"x"), None);
    }

    #[test]
    fn fingerprints_tell_operations_and_bodies_apart() {
        let create = key("k-1", "CreateUsers", b"body").unwrap();
        assert_eq!(create.key(), "k-1");
        assert_eq!(create.request_sha256(), key("k-1", "CreateUsers", b"body").unwrap().request_sha256());
        assert_ne!(create.request_sha256(), key("k-1", "DeleteUsers", b"body").unwrap().request_sha256());
        assert_ne!(create.request_sha256(), key("k-1", "CreateUsers", b"bodz").unwrap().request_sha256());
        // The separator keeps "CreateUsers" + "x" apart from "CreateUsersx" + "".
        assert_ne!(
            key("k", "CreateUsers", b"x").unwrap().request_sha256(),
            key("k", "CreateUsersx", b"").unwrap().request_sha256()
        );
    }

    #[test]
    fn bad_keys_are_refused_with_their_reason() {
        for bad in ["has space", "tab\t", "é", &"k".repeat(MAX_REQUEST_ID_BYTES + 1)] {
            let error = IdempotencyKey::parse(bad.to_owned(), "CreateUsers", b"").unwrap_err();
            assert_eq!(error.reason(), "INVALID_REQUEST_ID", "{bad:?}");
            assert_eq!(error.field(), Some("request_id"));
        }
        assert!(key(&"k".repeat(MAX_REQUEST_ID_BYTES), "CreateUsers", b"").is_some());
    }
}
