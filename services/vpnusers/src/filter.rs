//! Which users a list, export or bulk change covers ([`UserFilter`]), the
//! order of a list ([`UserSort`]), and their translation into one sea-query
//! condition that means the same on SQLite and PostgreSQL.
//!
//! Wildcards (`*`, `?`) become `LIKE` patterns with every other character
//! escaped, matched against `LOWER(column)`, so `%`, `_` and `\` in a pattern
//! are literal and case folding is the same on both backends (ASCII).

use sea_orm::DbBackend;
use sea_orm::sea_query::{Condition, Expr, ExprTrait, Func, LikeExpr, SimpleExpr};
use serde::{Deserialize, Serialize};

use crate::error::VpnUsersError;
use crate::model::{MAX_TRAFFIC_BYTES, UserStatus, VpnProtocol};
use crate::schema::vpn_user::Column;

/// Longest wildcard pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// The escape character of generated `LIKE` patterns.
const LIKE_ESCAPE: char = '\\';

/// An inclusive range of instants in Unix microseconds; `None` is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstantRange {
    /// Earliest instant included.
    pub start_micros: Option<i64>,
    /// Latest instant included.
    pub end_micros: Option<i64>,
}

/// An inclusive range of byte counts; `None` is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// Smallest value included.
    pub min_bytes: Option<u64>,
    /// Largest value included.
    pub max_bytes: Option<u64>,
}

/// Conditions on users; every one set must hold. The default matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFilter {
    /// Exact username.
    pub username: Option<String>,
    /// Username wildcard (`*`, `?`), ASCII case-insensitive.
    pub username_pattern: Option<String>,
    /// Exact email.
    pub email: Option<String>,
    /// Email wildcard, as `username_pattern`.
    pub email_pattern: Option<String>,
    /// Any of these statuses; empty means any.
    pub statuses: Vec<UserStatus>,
    /// Any of these protocols; empty means any.
    pub protocols: Vec<VpnProtocol>,
    /// Creation time range.
    pub created: InstantRange,
    /// Expiry range; users that never expire match no expiry range.
    pub expires: InstantRange,
    /// Range of traffic used.
    pub traffic_used: ByteRange,
    /// Range of traffic limit.
    pub traffic_limit: ByteRange,
}

impl UserFilter {
    /// Whether the filter matches every user.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Refuses contradictory ranges and oversized patterns.
    pub fn validate(&self) -> Result<(), VpnUsersError> {
        let invalid =
            |field: &'static str, reason: &str| VpnUsersError::InvalidFilter { field, reason: reason.to_owned() };
        for (field, pattern) in [
            ("filter.username_pattern", &self.username_pattern),
            ("filter.email_pattern", &self.email_pattern),
            ("filter.username", &self.username),
            ("filter.email", &self.email),
        ] {
            if let Some(pattern) = pattern {
                if pattern.len() > MAX_PATTERN_BYTES {
                    return Err(invalid(field, "must be at most 256 bytes"));
                }
                if pattern.contains('\0') {
                    return Err(invalid(field, "must not contain NUL"));
                }
            }
        }
        for (field, range) in [("filter.created", self.created), ("filter.expires", self.expires)] {
            if let (Some(start), Some(end)) = (range.start_micros, range.end_micros)
                && start > end
            {
                return Err(invalid(field, "start_time is after end_time"));
            }
        }
        for (field, range) in [("filter.traffic_used", self.traffic_used), ("filter.traffic_limit", self.traffic_limit)]
        {
            if let (Some(min), Some(max)) = (range.min_bytes, range.max_bytes)
                && min > max
            {
                return Err(invalid(field, "min_bytes is above max_bytes"));
            }
        }
        Ok(())
    }

    /// The SQL condition for `backend`; call [`UserFilter::validate`] first.
    #[must_use]
    pub fn condition(&self, backend: DbBackend) -> Condition {
        let mut condition = Condition::all();
        if let Some(username) = &self.username {
            condition = condition.add(Expr::col(Column::Username).eq(username.as_str()));
        }
        if let Some(pattern) = &self.username_pattern {
            condition = condition.add(wildcard_match(Column::Username, pattern));
        }
        if let Some(email) = &self.email {
            condition = condition.add(Expr::col(Column::Email).eq(email.as_str()));
        }
        if let Some(pattern) = &self.email_pattern {
            condition = condition.add(wildcard_match(Column::Email, pattern));
        }
        if !self.statuses.is_empty() {
            let statuses = self.statuses.iter().map(|s| s.as_db_str());
            // No index leads with status (see `schema`): the page is read from
            // the sort index, filtering as it scans, which is what a page of 50
            // wants. On SQLite `+status` keeps it that way for several statuses
            // even if one is added. PostgreSQL weighs the plans itself.
            let status = if backend == DbBackend::Sqlite && self.statuses.len() > 1 {
                Expr::cust("+\"status\"")
            } else {
                Expr::col(Column::Status)
            };
            condition = condition.add(status.is_in(statuses));
        }
        if !self.protocols.is_empty() {
            condition = condition.add(Expr::col(Column::Protocol).is_in(self.protocols.iter().map(|p| p.as_db_str())));
        }
        condition = add_instant_range(condition, Column::CreatedAtMicros, self.created);
        if self.expires != InstantRange::default() {
            // "Never" is stored as i64::MAX; an expiry filter selects users that expire.
            condition = condition.add(Expr::col(Column::ExpiresAtMicros).lte(crate::model::MAX_INSTANT_MICROS));
            condition = add_instant_range(condition, Column::ExpiresAtMicros, self.expires);
        }
        condition = add_byte_range(condition, Column::TrafficUsedBytes, self.traffic_used);
        add_byte_range(condition, Column::TrafficLimitBytes, self.traffic_limit)
    }
}

fn add_instant_range(condition: Condition, column: Column, range: InstantRange) -> Condition {
    let mut condition = condition;
    if let Some(start) = range.start_micros {
        condition = condition.add(Expr::col(column).gte(start));
    }
    if let Some(end) = range.end_micros {
        condition = condition.add(Expr::col(column).lte(end));
    }
    condition
}

fn add_byte_range(condition: Condition, column: Column, range: ByteRange) -> Condition {
    let clamp = |bytes: u64| i64::try_from(std::cmp::min(bytes, MAX_TRAFFIC_BYTES)).unwrap_or(i64::MAX);
    let mut condition = condition;
    if let Some(min) = range.min_bytes {
        // Nothing stored is above 2^63 - 1, so a larger minimum matches nothing.
        if min > MAX_TRAFFIC_BYTES {
            return condition.add(Expr::val(1).eq(0));
        }
        condition = condition.add(Expr::col(column).gte(clamp(min)));
    }
    if let Some(max) = range.max_bytes {
        condition = condition.add(Expr::col(column).lte(clamp(max)));
    }
    condition
}

fn wildcard_match(column: Column, pattern: &str) -> SimpleExpr {
    let like = Func::lower(Expr::col(column)).like(LikeExpr::new(like_pattern(pattern)).escape(LIKE_ESCAPE));
    // Usernames compare bytewise on both backends (SQLite BINARY, PostgreSQL
    // "C"), so a literal prefix is exactly a range of `lower(username)`, which
    // is indexed; LIKE still decides. Emails compare in the database's
    // collation, where a prefix need not be a range.
    match literal_prefix_range(pattern).filter(|_| matches!(column, Column::Username)) {
        Some((low, high)) => {
            Func::lower(Expr::col(column)).gte(low).and(Func::lower(Expr::col(column)).lt(high)).and(like)
        }
        None => like,
    }
}

/// `[low, high)`: the lowercase strings that start with the wildcard's
/// literal prefix, when it has one of ASCII characters (so the lowercase is
/// the same in Rust, SQLite and PostgreSQL, and the last byte can be raised).
fn literal_prefix_range(wildcard: &str) -> Option<(String, String)> {
    let prefix: String =
        wildcard.chars().take_while(|c| !matches!(c, '*' | '?')).map(|c| c.to_ascii_lowercase()).collect();
    let last = prefix.chars().last()?;
    if !prefix.is_ascii() || last == '\u{7f}' {
        return None;
    }
    let mut high = prefix[..prefix.len() - 1].to_owned();
    high.push(char::from(u8::try_from(last).ok()? + 1));
    Some((prefix, high))
}

/// Translates a `*`/`?` wildcard into a lowercase `LIKE` pattern escaped with `\`.
#[must_use]
pub fn like_pattern(wildcard: &str) -> String {
    let mut like = String::with_capacity(wildcard.len() + 4);
    for c in wildcard.chars() {
        match c {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '%' | '_' | LIKE_ESCAPE => {
                like.push(LIKE_ESCAPE);
                like.push(c);
            }
            other => like.extend(other.to_lowercase()),
        }
    }
    like
}

/// The column a list is sorted by; ties are broken by id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortField {
    /// By username, byte order.
    Username,
    /// By creation time.
    #[default]
    CreatedAt,
    /// By last change.
    UpdatedAt,
    /// By expiry, never-expiring last.
    ExpiresAt,
    /// By traffic used.
    TrafficUsed,
}

impl SortField {
    /// The column behind the field.
    #[must_use]
    pub fn column(self) -> Column {
        match self {
            Self::Username => Column::Username,
            Self::CreatedAt => Column::CreatedAtMicros,
            Self::UpdatedAt => Column::UpdatedAtMicros,
            Self::ExpiresAt => Column::ExpiresAtMicros,
            Self::TrafficUsed => Column::TrafficUsedBytes,
        }
    }
}

/// Sort direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortDirection {
    /// Smallest first.
    #[default]
    Ascending,
    /// Largest first.
    Descending,
}

/// The order of a list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSort {
    /// The sort key.
    pub field: SortField,
    /// Its direction; ties by id go the same way.
    pub direction: SortDirection,
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::{Query, SqliteQueryBuilder};

    use super::*;
    use crate::schema::vpn_user::Entity;

    fn check(wildcard: &str, expected: &str) {
        assert_eq!(like_pattern(wildcard), expected, "{wildcard:?}");
    }

    #[test]
    fn wildcards_become_escaped_like_patterns() {
        check("alice", "alice");
        check("Ali*", "ali%");
        check("a?c", "a_c");
        check("100%_off\\", "100\\%\\_off\\\\");
        check("*@EXAMPLE.com", "%@example.com");
        check("' OR 1=1 --", "' or 1=1 --");
    }

    #[test]
    fn values_are_bound_never_inlined() {
        let filter = UserFilter {
            username_pattern: Some("x'; DROP TABLE vpn_users; --*".into()),
            statuses: vec![UserStatus::Active],
            ..UserFilter::default()
        };
        let (sql, values) = Query::select()
            .column(Column::Id)
            .from(Entity)
            .cond_where(filter.condition(DbBackend::Sqlite))
            .build(SqliteQueryBuilder);
        assert!(!sql.contains("DROP"), "{sql}");
        // The pattern, its prefix range (two bounds) and the status.
        assert_eq!(values.0.len(), 4, "{sql}");
    }

    #[test]
    fn literal_prefixes_become_ranges_of_lowercase_usernames() {
        let range = |wildcard: &str| literal_prefix_range(wildcard);
        assert_eq!(range("user0123*"), Some(("user0123".into(), "user0124".into())));
        assert_eq!(range("Ab?c*"), Some(("ab".into(), "ac".into())));
        assert_eq!(range("alice"), Some(("alice".into(), "alicf".into())));
        assert_eq!(range("*bob"), None, "no literal prefix");
        assert_eq!(range("?bob"), None);
        assert_eq!(range("jos\u{e9}*"), None, "non-ASCII folds differently per backend");
    }

    #[test]
    fn contradictory_ranges_are_refused() {
        let filter = UserFilter {
            created: InstantRange { start_micros: Some(10), end_micros: Some(5) },
            ..UserFilter::default()
        };
        assert_eq!(filter.validate().unwrap_err().reason(), "INVALID_FILTER");
        let filter =
            UserFilter { traffic_used: ByteRange { min_bytes: Some(9), max_bytes: Some(1) }, ..UserFilter::default() };
        assert_eq!(filter.validate().unwrap_err().field(), Some("filter.traffic_used"));
        assert!(UserFilter::default().is_empty());
    }
}
