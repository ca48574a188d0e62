//! What Virtualmin knows, as plain Rust: domains, plans, bandwidth, server
//! info. Sizes are [`ByteAmount`]s (exact, an honest interval, or unlimited),
//! times are `SystemTime`s from Virtualmin's Unix-time fields, never its
//! locale-dependent date strings. No type here has a password field, so a
//! password Virtualmin lists cannot be carried out of the service.

use std::fmt;
use std::time::SystemTime;

/// An amount of bytes as Virtualmin reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteAmount {
    /// From a byte-exact field.
    Exact(u64),
    /// From a human size: the true count is in `[min_bytes, max_bytes_exclusive)`.
    Range { min_bytes: u64, max_bytes_exclusive: u64 },
    /// No limit.
    Unlimited,
}

/// What kind of virtual server a domain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainType {
    /// `Top-level server`.
    TopLevel,
    /// `Sub-server`.
    SubServer,
    /// `Alias`.
    Alias,
    /// `Alias with own email`.
    AliasWithOwnEmail,
    /// Missing, or a kind this version does not know.
    Unknown,
}

impl DomainType {
    /// Reads Virtualmin's `type` value.
    #[must_use]
    pub fn from_wire(text: &str) -> Self {
        match text {
            "Top-level server" => Self::TopLevel,
            "Sub-server" => Self::SubServer,
            "Alias" => Self::Alias,
            "Alias with own email" => Self::AliasWithOwnEmail,
            _ => Self::Unknown,
        }
    }
}

/// A virtual server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// The domain name.
    pub name: String,
    /// Virtualmin's id.
    pub id: String,
    /// Top-level, sub-server or alias.
    pub domain_type: DomainType,
    /// The parent of a sub-server.
    pub parent_domain: Option<String>,
    /// The target of an alias.
    pub alias_target: Option<String>,
    /// The description.
    pub description: String,
    /// The administrator's user name.
    pub owner_username: String,
    /// The plan id.
    pub plan_id: Option<String>,
    /// The plan name.
    pub plan_name: Option<String>,
    /// The template name.
    pub template_name: Option<String>,
    /// Enabled features.
    pub features: Vec<String>,
    /// Why it is suspended; `None` when active.
    pub suspension_reason: Option<String>,
    /// When it was created.
    pub created_at: Option<SystemTime>,
    /// Disk quota (top-level servers).
    pub disk_quota: Option<ByteAmount>,
    /// Disk used (top-level servers).
    pub disk_used: Option<ByteAmount>,
    /// Bandwidth limit (top-level servers).
    pub bandwidth_limit: Option<ByteAmount>,
    /// Bandwidth used this period.
    pub bandwidth_used: Option<ByteAmount>,
    /// Size of all databases.
    pub databases_size: Option<ByteAmount>,
    /// Number of databases.
    pub database_count: u32,
    /// IPv4 address without Virtualmin's note.
    pub ip_address: Option<String>,
    /// IPv6 address.
    pub ipv6_address: Option<String>,
    /// Home directory.
    pub home_directory: Option<String>,
    /// Contact email.
    pub contact_email: Option<String>,
    /// PHP version.
    pub php_version: Option<String>,
    /// SSL certificate expiry.
    pub ssl_cert_expires_at: Option<SystemTime>,
    /// Last administrator login.
    pub last_login_at: Option<SystemTime>,
    /// Website URL.
    pub url: Option<String>,
}

impl Domain {
    /// True when suspended.
    #[must_use]
    pub fn is_suspended(&self) -> bool {
        self.suspension_reason.is_some()
    }
}

/// An account plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The plan id (`0` is the default plan).
    pub id: String,
    /// The plan name.
    pub name: String,
    /// Server disk quota.
    pub disk_quota: Option<ByteAmount>,
    /// Monthly bandwidth.
    pub bandwidth_limit: Option<ByteAmount>,
    /// Most virtual servers; `None` is unlimited.
    pub max_domains: Option<u64>,
    /// Most mailboxes; `None` is unlimited.
    pub max_mailboxes: Option<u64>,
    /// Most databases; `None` is unlimited.
    pub max_databases: Option<u64>,
    /// Most aliases; `None` is unlimited.
    pub max_aliases: Option<u64>,
}

/// A server-local calendar day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CalendarDate {
    /// Year.
    pub year: i32,
    /// Month, 1 to 12.
    pub month: u8,
    /// Day, 1 to 31.
    pub day: u8,
}

impl CalendarDate {
    /// Reads `YYYY-MM-DD`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '-');
        let year_text = parts.next()?;
        let month_text = parts.next()?;
        let day_text = parts.next()?;
        if year_text.len() != 4 || month_text.len() != 2 || day_text.len() != 2 {
            return None;
        }
        let date = Self { year: year_text.parse().ok()?, month: month_text.parse().ok()?, day: day_text.parse().ok()? };
        date.is_plausible().then_some(date)
    }

    /// True for month 1..=12 and day 1..=31 in years 1970..=9999.
    #[must_use]
    pub fn is_plausible(&self) -> bool {
        (1970..=9999).contains(&self.year) && (1..=12).contains(&self.month) && (1..=31).contains(&self.day)
    }

    /// True for a day that exists: plausible, and the day within its month's
    /// length (February 29 only in leap years). What a caller may ask for.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        let is_leap_year = (self.year % 4 == 0 && self.year % 100 != 0) || self.year % 400 == 0;
        let days_in_month = match self.month {
            2 if is_leap_year => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        self.is_plausible() && self.day <= days_in_month
    }
}

impl fmt::Display for CalendarDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// One day of one domain's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BandwidthDay {
    /// The day.
    pub date: CalendarDate,
    /// Bytes by kind (`web`, `mail`, ...), in Virtualmin's order.
    pub traffic: Vec<(String, u64)>,
}

/// One domain's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainBandwidth {
    /// The domain.
    pub domain_name: String,
    /// Days, oldest first.
    pub days: Vec<BandwidthDay>,
}

/// What `info` reports about a server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerInfo {
    /// The host name the server reports.
    pub reported_hostname: String,
    /// Virtualmin version.
    pub virtualmin_version: String,
    /// `GPL` or `Pro`.
    pub virtualmin_edition: String,
    /// Webmin version.
    pub webmin_version: String,
    /// Operating system.
    pub os: String,
    /// Kernel version.
    pub kernel_version: String,
    /// Disk capacity in bytes.
    pub disk_total_bytes: u64,
    /// Free disk in bytes.
    pub disk_free_bytes: u64,
    /// Physical memory in bytes.
    pub memory_total_bytes: u64,
    /// Free physical memory in bytes.
    pub memory_free_bytes: u64,
    /// Load averages.
    pub load_averages: Vec<f64>,
    /// Running processes.
    pub process_count: u32,
    /// Hosted domains.
    pub domain_count: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_days_that_exist_are_valid() {
        let check = |year, month, day, valid| {
            let date = CalendarDate { year, month, day };
            assert_eq!(date.is_valid(), valid, "{date}");
        };
        check(2026, 1, 31, true);
        check(2026, 2, 28, true);
        check(2026, 2, 29, false);
        check(2024, 2, 29, true);
        check(2000, 2, 29, true);
        check(2100, 2, 29, false);
        check(2026, 2, 30, false);
        check(2026, 4, 30, true);
        check(2026, 4, 31, false);
        check(2026, 12, 31, true);
        check(2026, 13, 1, false);
        check(2026, 1, 0, false);
        check(1969, 12, 31, false);
    }
}
