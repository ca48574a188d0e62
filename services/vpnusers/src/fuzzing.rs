//! Entry points for the fuzz targets in `fuzz/`, not an API: they drive page
//! token decoding with arbitrary input, both in front of the tag check (what
//! any caller can send) and behind it (the cursor JSON, reachable only with
//! the key, which the fuzzer cannot forge).

use crate::page_token::PageTokenKey;
use crate::store::{ListCursor, SearchCursor};

/// The fixed key the fuzz targets sign with.
fn fuzzing_key() -> PageTokenKey {
    PageTokenKey::new(b"mesh-fuzzing-page-token-key-0123".to_vec())
}

/// Whether `token`, as a caller sends it, is accepted as a list or a search
/// cursor for `context`.
#[must_use]
pub fn accepts_token(context: &[u8], token: &str) -> bool {
    let key = fuzzing_key();
    key.verify::<ListCursor>(context, token).is_ok() || key.verify::<SearchCursor>(context, token).is_ok()
}

/// Signs `payload` as it is and decodes it back as a list and a search
/// cursor; returns whether each was accepted. An accepted cursor is signed
/// again and must read back equal.
#[must_use]
pub fn decode_signed_payload(context: &[u8], payload: &[u8]) -> (bool, bool) {
    let key = fuzzing_key();
    let token = key.sign_payload(context, payload.to_vec());
    let list = key.verify::<ListCursor>(context, &token).ok();
    let search = key.verify::<SearchCursor>(context, &token).ok();
    if let Some(cursor) = &list {
        let again = key.sign(context, cursor);
        assert_eq!(key.verify::<ListCursor>(context, &again).ok().as_ref(), Some(cursor), "list cursor round trip");
    }
    if let Some(cursor) = &search {
        let again = key.sign(context, cursor);
        assert_eq!(key.verify::<SearchCursor>(context, &again).ok().as_ref(), Some(cursor), "search cursor round trip");
    }
    (list.is_some(), search.is_some())
}
