//! `KeyPattern`: the key matchers behind pattern invalidation.
//! A glob (`user:*`, `user:?`, `user:[0-9]*`) or a bounded regex. Patterns come
//! from callers, so compilation is capped in pattern length and compiled size:
//! a hostile pattern fails fast with an error instead of eating memory or CPU.

use globset::{GlobBuilder, GlobMatcher};
use regex::{Regex, RegexBuilder};

use crate::error::CacheError;

/// The longest pattern accepted, in bytes; real key patterns are far shorter.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// The cap on a regex's compiled program and on its lazy DFA cache.
/// 1 MiB admits any practical key regex and rejects `\w{50000}`-style bombs.
pub const MAX_REGEX_COMPILED_BYTES: usize = 1 << 20;

/// A compiled key matcher.
#[derive(Debug, Clone)]
pub struct KeyPattern {
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Glob(GlobMatcher),
    Regex(Regex),
}

impl KeyPattern {
    /// Compiles a glob: `*` and `?` match any characters including `/` and `:`,
    /// `[..]` is a class, `{a,b}` an alternation. The glob matches the whole key.
    pub fn glob(pattern: &str) -> Result<Self, CacheError> {
        check_length(pattern)?;
        let glob = GlobBuilder::new(pattern)
            // Keys are not paths: `*` must cross `/` so `user:*` matches `user:1/profile`.
            .literal_separator(false)
            .build()
            .map_err(|error| CacheError::InvalidPattern {
                // The kind alone: the full error echoes the pattern back.
                reason: error.kind().to_string(),
            })?;
        Ok(Self { matcher: Matcher::Glob(glob.compile_matcher()) })
    }

    /// Compiles a regex with the `regex` crate's syntax (no backreferences, no
    /// lookaround). It is unanchored as written: `user` matches `poweruser:1`;
    /// write `^user:.*$` to match whole keys.
    pub fn regex(pattern: &str) -> Result<Self, CacheError> {
        check_length(pattern)?;
        let regex = RegexBuilder::new(pattern)
            .size_limit(MAX_REGEX_COMPILED_BYTES)
            .dfa_size_limit(MAX_REGEX_COMPILED_BYTES)
            .build()
            .map_err(|error| match error {
                regex::Error::CompiledTooBig(limit_bytes) => CacheError::PatternTooComplex { limit_bytes },
                regex::Error::Syntax(message) => CacheError::InvalidPattern { reason: syntax_error_summary(&message) },
                // `regex::Error` is non-exhaustive; a future variant is still a bad pattern.
                other => CacheError::InvalidPattern { reason: other.to_string() },
            })?;
        Ok(Self { matcher: Matcher::Regex(regex) })
    }

    /// Reports whether `key` matches the pattern.
    #[must_use]
    pub fn matches(&self, key: &str) -> bool {
        match &self.matcher {
            Matcher::Glob(glob) => glob.is_match(key),
            Matcher::Regex(regex) => regex.is_match(key),
        }
    }
}

fn check_length(pattern: &str) -> Result<(), CacheError> {
    if pattern.is_empty() {
        return Err(CacheError::InvalidPattern { reason: "pattern is empty".to_owned() });
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(CacheError::InvalidPattern {
            reason: format!("pattern is {} bytes, max {MAX_PATTERN_BYTES}", pattern.len()),
        });
    }
    Ok(())
}

/// Keeps the `error: ..` line of a regex syntax error. The full message repeats
/// the pattern over several lines with a caret, which does not fit one reason.
fn syntax_error_summary(message: &str) -> String {
    message.lines().rev().find_map(|line| line.trim().strip_prefix("error: ")).unwrap_or(message).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    enum Kind {
        Glob,
        Regex,
    }

    fn compile(kind: Kind, pattern: &str) -> Result<KeyPattern, CacheError> {
        match kind {
            Kind::Glob => KeyPattern::glob(pattern),
            Kind::Regex => KeyPattern::regex(pattern),
        }
    }

    #[track_caller]
    fn check(kind: Kind, pattern: &str, key: &str, expected: bool) {
        let compiled = compile(kind, pattern).expect("pattern compiles");
        assert_eq!(compiled.matches(key), expected, "{pattern:?} vs {key:?}");
    }

    #[track_caller]
    fn check_reason(kind: Kind, pattern: &str, expected_reason: &str) {
        let error = compile(kind, pattern).expect_err("pattern is rejected");
        assert_eq!(error.reason(), expected_reason, "{pattern:?}: {error}");
    }

    #[test]
    fn glob_matches_whole_keys() {
        use Kind::Glob;
        check(Glob, "user:*", "user:1", true);
        check(Glob, "user:*", "user:", true);
        check(Glob, "user:*", "user:1/profile", true);
        check(Glob, "user:*", "xuser:1", false);
        check(Glob, "user:*", "users:1", false);
        check(Glob, "*:profile", "user:42:profile", true);
        check(Glob, "user:?", "user:1", true);
        check(Glob, "user:?", "user:12", false);
        check(Glob, "user:[0-9]", "user:7", true);
        check(Glob, "user:[0-9]", "user:x", false);
        check(Glob, "user:[!0-9]", "user:x", true);
        check(Glob, "{user,team}:1", "team:1", true);
        check(Glob, "exact", "exact", true);
        check(Glob, "exact", "exactly", false);
        check(Glob, "*", "", true);
    }

    #[test]
    fn regex_is_unanchored_unless_written_anchored() {
        use Kind::Regex;
        check(Regex, "user", "poweruser:1", true);
        check(Regex, "^user:", "poweruser:1", false);
        check(Regex, "^user:[0-9]+$", "user:123", true);
        check(Regex, "^user:[0-9]+$", "user:123x", false);
        check(Regex, r"session:\w{8}", "session:abcdef12", true);
        check(Regex, "a|b", "xbx", true);
        check(Regex, "(?i)^USER:", "user:1", true);
    }

    #[test]
    fn bad_patterns_are_invalid() {
        check_reason(Kind::Glob, "", "INVALID_PATTERN");
        check_reason(Kind::Regex, "", "INVALID_PATTERN");
        check_reason(Kind::Glob, "user:[0-9", "INVALID_PATTERN");
        check_reason(Kind::Glob, "{a,b", "INVALID_PATTERN");
        check_reason(Kind::Regex, "(unclosed", "INVALID_PATTERN");
        check_reason(Kind::Regex, r"(a)\1", "INVALID_PATTERN");
        check_reason(Kind::Regex, "(?=lookahead)", "INVALID_PATTERN");
        check_reason(Kind::Regex, "(?<!behind)x", "INVALID_PATTERN");
        check_reason(Kind::Regex, &"a".repeat(MAX_PATTERN_BYTES + 1), "INVALID_PATTERN");
        check_reason(Kind::Glob, &"a".repeat(MAX_PATTERN_BYTES + 1), "INVALID_PATTERN");
    }

    #[test]
    fn oversized_regex_programs_are_too_complex() {
        check_reason(Kind::Regex, "(?:a{1000}){1000}", "PATTERN_TOO_COMPLEX");
        check_reason(Kind::Regex, r"\w{50000}", "PATTERN_TOO_COMPLEX");
        assert_eq!(
            KeyPattern::regex(r"\w{50000}").expect_err("too big"),
            CacheError::PatternTooComplex { limit_bytes: MAX_REGEX_COMPILED_BYTES }
        );
    }

    #[test]
    fn syntax_errors_are_summarised_in_one_line() {
        let error = KeyPattern::regex("(unclosed").expect_err("unclosed group");
        let CacheError::InvalidPattern { reason } = error else {
            panic!("expected InvalidPattern, got {error:?}");
        };
        assert_eq!(reason, "unclosed group");
        let error = KeyPattern::regex("a".repeat(2000).as_str()).expect_err("too long");
        assert_eq!(error.to_string(), "invalid pattern: pattern is 2000 bytes, max 1024");
    }
}
