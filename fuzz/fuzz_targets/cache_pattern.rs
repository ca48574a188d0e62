//! The Cache's invalidation patterns, compiled from caller input: a glob or
//! a bounded regex must compile or fail with a typed error, never panic,
//! and a compiled pattern must match any key without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_cache::KeyPattern;

fuzz_target!(|data: &[u8]| {
    let Some((syntax, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    // The first line is the pattern, the rest a key to match.
    let (pattern, key) = text.split_once('\n').unwrap_or((text, "user:42"));
    let compiled = if syntax % 2 == 0 { KeyPattern::glob(pattern) } else { KeyPattern::regex(pattern) };
    if let Ok(compiled) = compiled {
        let _ = compiled.matches(key);
        let _ = compiled.matches(pattern);
    }
});
