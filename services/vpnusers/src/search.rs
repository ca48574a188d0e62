//! Full-text search that means the same on SQLite and PostgreSQL.
//!
//! Both backends index [`search_text`], which this module computes in Rust:
//! username, email and note, lowercased, with every character that is not a
//! letter or digit turned into a space. So both tokenizers (FTS5 `unicode61`
//! and PostgreSQL's `simple` configuration) see plain words and agree on them.
//!
//! A query goes through the same normalisation ([`query_words`]); the words
//! are joined by AND, every word but the last as an exact term (FTS5
//! `"word"`, tsquery `word`) and the last, which the caller may still be
//! typing, as a prefix term (`"word"*`, `word:*`). Making every word a prefix
//! let a finished common word (`ticket`) expand to a term per row and cost
//! ×30 (see docs/benchmarks-notes.md, VpnUsers); search-as-you-type engines
//! choose the same ("prefix last"). Words hold only letters and digits, so no
//! input can be query syntax: `" OR *)` is just no words, and `NEAR` or `AND`
//! are words to find.

use crate::error::VpnUsersError;

/// Longest search text, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Most words in one search; more would only slow the query.
pub const MAX_QUERY_WORDS: usize = 16;

/// The indexed text of a user: the words of username, email and note.
#[must_use]
pub fn search_text(username: &str, email: &str, note: &str) -> String {
    let mut text = String::with_capacity(username.len() + email.len() + note.len() + 2);
    for field in [username, email, note] {
        for word in words(field) {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&word);
        }
    }
    text
}

/// The words of a search: empty when the text holds no letter or digit.
pub fn query_words(query: &str) -> Result<Vec<String>, VpnUsersError> {
    if query.trim().is_empty() {
        return Err(VpnUsersError::InvalidSearchQuery { reason: "must not be empty".to_owned() });
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(VpnUsersError::InvalidSearchQuery { reason: format!("must be at most {MAX_QUERY_BYTES} bytes") });
    }
    let mut found: Vec<String> = Vec::new();
    for word in words(query) {
        if !found.contains(&word) {
            found.push(word);
        }
    }
    if found.len() > MAX_QUERY_WORDS {
        return Err(VpnUsersError::InvalidSearchQuery { reason: format!("must hold at most {MAX_QUERY_WORDS} words") });
    }
    Ok(found)
}

/// An FTS5 `MATCH` expression: quoted exact terms, the last a prefix term.
#[must_use]
pub fn fts5_expression(words: &[String]) -> String {
    let last = words.len().saturating_sub(1);
    let terms: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(index, word)| {
            let quoted = word.replace('"', "\"\"");
            if index == last { format!("\"{quoted}\"*") } else { format!("\"{quoted}\"") }
        })
        .collect();
    terms.join(" AND ")
}

/// A `to_tsquery('simple', ..)` argument: exact terms, the last a prefix term.
#[must_use]
pub fn tsquery_expression(words: &[String]) -> String {
    debug_assert!(words.iter().all(|word| word.chars().all(char::is_alphanumeric)), "words are alphanumeric");
    let last = words.len().saturating_sub(1);
    let terms: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(index, word)| if index == last { format!("{word}:*") } else { word.clone() })
        .collect();
    terms.join(" & ")
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|word| !word.is_empty()).map(str::to_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str, expected_fts5: &str, expected_tsquery: &str) {
        let words = query_words(query).unwrap();
        assert_eq!(fts5_expression(&words), expected_fts5, "{query:?}");
        assert_eq!(tsquery_expression(&words), expected_tsquery, "{query:?}");
    }

    #[test]
    fn indexed_text_is_lowercase_words() {
        assert_eq!(
            search_text("Alice.Smith", "alice@Example.com", "VIP: since 2021!"),
            "alice smith alice example com vip since 2021"
        );
        assert_eq!(search_text("bob", "b@x.io", ""), "bob b x io");
    }

    #[test]
    fn queries_become_exact_terms_then_a_prefix_and_never_syntax() {
        check("alice", "\"alice\"*", "alice:*");
        check("Alice EXAMPLE", "\"alice\" AND \"example\"*", "alice & example:*");
        check("alice@example.com", "\"alice\" AND \"example\" AND \"com\"*", "alice & example & com:*");
        check("a\" OR \"b", "\"a\" AND \"or\" AND \"b\"*", "a & or & b:*");
        check(
            "NEAR(x y) AND NOT z*",
            "\"near\" AND \"x\" AND \"y\" AND \"and\" AND \"not\" AND \"z\"*",
            "near & x & y & and & not & z:*",
        );
        check(
            "'; DROP TABLE vpn_users; --",
            "\"drop\" AND \"table\" AND \"vpn\" AND \"users\"*",
            "drop & table & vpn & users:*",
        );
        check("!&|():*<->", "", "");
        check("bob bob", "\"bob\"*", "bob:*");
    }

    #[test]
    fn empty_and_oversized_queries_are_refused() {
        assert_eq!(query_words("  ").unwrap_err().reason(), "INVALID_QUERY");
        assert_eq!(query_words(&"a".repeat(257)).unwrap_err().reason(), "INVALID_QUERY");
        let many = (0..17).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        assert_eq!(query_words(&many).unwrap_err().reason(), "INVALID_QUERY");
    }
}
