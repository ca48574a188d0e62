//! Opaque, tamper-evident page tokens.
//!
//! A token is `base64url(payload ‖ tag)`: the payload is the cursor as JSON,
//! the tag the first 16 bytes of HMAC-SHA256 over a context (the filter and
//! sort of the list, or the search words) and the payload. A token edited by
//! hand, made up, or replayed against another filter fails the tag check and
//! is refused as `INVALID_PAGE_TOKEN`. The key lives in the database (see
//! `store`), so every replica and every restart accepts the same tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

use crate::error::VpnUsersError;

/// Bytes of the HMAC kept in a token; 128 bits is far beyond guessing.
const TAG_BYTES: usize = 16;
/// Longest token accepted; real ones are under 200 bytes.
const MAX_TOKEN_BYTES: usize = 1024;

/// The key page tokens are signed with.
#[derive(Clone)]
pub struct PageTokenKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenKey(..)")
    }
}

impl PageTokenKey {
    /// A key from secret bytes (at least 16).
    #[must_use]
    pub fn new(key: Vec<u8>) -> Self {
        debug_assert!(key.len() >= 16, "page token keys are at least 128 bits");
        Self { key }
    }

    /// Signs `cursor` for use with `context` only.
    #[must_use]
    pub fn sign<T: Serialize>(&self, context: &[u8], cursor: &T) -> String {
        self.sign_payload(context, serde_json::to_vec(cursor).expect("cursors serialize to JSON"))
    }

    /// Signs payload bytes as they are; the fuzz target uses it to reach the
    /// cursor decoding behind the tag check with arbitrary JSON.
    pub(crate) fn sign_payload(&self, context: &[u8], payload: Vec<u8>) -> String {
        let mut token = payload;
        let tag = self.mac(context, &token).finalize().into_bytes();
        token.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// Reads a token signed for `context`; anything else is `InvalidPageToken`.
    pub fn verify<T: DeserializeOwned>(&self, context: &[u8], token: &str) -> Result<T, VpnUsersError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VpnUsersError::InvalidPageToken);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| VpnUsersError::InvalidPageToken)?;
        if bytes.len() <= TAG_BYTES {
            return Err(VpnUsersError::InvalidPageToken);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
        self.mac(context, payload).verify_truncated_left(tag).map_err(|_| VpnUsersError::InvalidPageToken)?;
        serde_json::from_slice(payload).map_err(|_| VpnUsersError::InvalidPageToken)
    }

    fn mac(&self, context: &[u8], payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        // The length prefix keeps (context, payload) pairs from colliding.
        mac.update(&(context.len() as u64).to_be_bytes());
        mac.update(context);
        mac.update(payload);
        mac
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Cursor {
        page: u32,
        after: String,
    }

    fn key() -> PageTokenKey {
        PageTokenKey::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn a_token_round_trips_in_its_context_only() {
        let cursor = Cursor { page: 2, after: "alice".into() };
        let token = key().sign(b"filter-a", &cursor);
        assert_eq!(key().verify::<Cursor>(b"filter-a", &token).unwrap(), cursor);
        assert_eq!(key().verify::<Cursor>(b"filter-b", &token).unwrap_err().reason(), "INVALID_PAGE_TOKEN");
        let other_key = PageTokenKey::new(b"fedcba9876543210fedcba9876543210".to_vec());
        assert!(other_key.verify::<Cursor>(b"filter-a", &token).is_err());
    }

    #[test]
    fn forged_tokens_are_refused() {
        let token = key().sign(b"ctx", &Cursor { page: 2, after: "alice".into() });
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[3] ^= 1;
        let flipped = URL_SAFE_NO_PAD.encode(&bytes);
        let unsigned = URL_SAFE_NO_PAD.encode(br#"{"page":9,"after":"zed"}"#);
        for forged in [flipped.as_str(), unsigned.as_str(), "", "not base64!", "AAAA", &"A".repeat(2000)] {
            assert!(key().verify::<Cursor>(b"ctx", forged).is_err(), "{forged:?}");
        }
    }
}
