//! Webmin's human sizes (`1.19 GiB`, `734 bytes`, `Unlimited`): no input may
//! panic, and every size read is a non-empty byte interval.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_virtualmin::ByteAmount;
use mesh_virtualmin::nice_size::parse_nice_size;

fuzz_target!(|text: &str| {
    if let Ok(ByteAmount::Range { min_bytes, max_bytes_exclusive }) = parse_nice_size(text) {
        assert!(min_bytes < max_bytes_exclusive, "{text:?} read as an empty interval");
    }
});
