//! Page tokens: whatever a caller sends is refused unless it was signed, and
//! the cursor JSON behind the tag (reachable here with the fuzzing key)
//! decodes without panicking and round-trips.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_vpnusers::fuzzing::{accepts_token, decode_signed_payload};

fuzz_target!(|data: &[u8]| {
    // The first line is the list's context (its filter), the rest the input.
    let (context, input) = match data.iter().position(|byte| *byte == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    if let Ok(token) = std::str::from_utf8(input) {
        assert!(!accepts_token(context, token), "an unsigned token was accepted: {token:?}");
    }
    let _ = decode_signed_payload(context, input);
});
