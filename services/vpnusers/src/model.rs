//! The domain values of the service: [`User`], what a caller may set on one
//! ([`NewUser`], [`UserPatch`]), the closed sets of statuses and protocols,
//! and the checks every written field passes. Plain Rust: no database, no wire
//! types.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::VpnUsersError;

/// Longest username, in characters (all ASCII, so also bytes).
pub const MAX_USERNAME_CHARS: usize = 64;
/// Longest email, in bytes (RFC 5321's path limit less the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Longest note, in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;
/// Largest byte count the databases store (both keep a signed 64-bit integer).
pub const MAX_TRAFFIC_BYTES: u64 = i64::MAX as u64;
/// Latest instant the service stores, in microseconds since the Unix epoch.
/// `i64::MAX` itself is the stored form of "never expires".
pub const MAX_INSTANT_MICROS: i64 = i64::MAX - 1;

/// A VPN account as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Server-assigned UUID v7.
    pub id: Uuid,
    /// Unique login name.
    pub username: String,
    /// Contact address.
    pub email: String,
    /// Account state.
    pub status: UserStatus,
    /// Protocol the account uses.
    pub protocol: VpnProtocol,
    /// Traffic used so far.
    pub traffic_used_bytes: u64,
    /// Traffic allowed; 0 means unlimited.
    pub traffic_limit_bytes: u64,
    /// Expiry in microseconds since the Unix epoch; `None` means never.
    pub expires_at_micros: Option<i64>,
    /// Creation time in microseconds since the Unix epoch.
    pub created_at_micros: i64,
    /// Last change in microseconds since the Unix epoch.
    pub updated_at_micros: i64,
    /// Free text for operators.
    pub note: String,
}

/// The state of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UserStatus {
    /// May connect.
    Active,
    /// Refused until reactivated.
    Suspended,
    /// Past its expiry.
    Expired,
    /// Switched off for good.
    Disabled,
}

impl UserStatus {
    /// Every status, in wire order.
    pub const ALL: [Self; 4] = [Self::Active, Self::Suspended, Self::Expired, Self::Disabled];

    /// The stored spelling.
    #[must_use]
    pub fn as_db_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Expired => "expired",
            Self::Disabled => "disabled",
        }
    }

    /// Reads the stored spelling.
    #[must_use]
    pub fn from_db_str(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_db_str() == stored)
    }
}

/// The VPN protocol of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VpnProtocol {
    /// WireGuard.
    WireGuard,
    /// `OpenVPN`.
    OpenVpn,
    /// IPsec with `IKEv2`.
    Ikev2,
    /// L2TP over IPsec.
    L2tp,
    /// Shadowsocks.
    Shadowsocks,
    /// VLESS.
    Vless,
}

impl VpnProtocol {
    /// Every protocol, in wire order.
    pub const ALL: [Self; 6] =
        [Self::WireGuard, Self::OpenVpn, Self::Ikev2, Self::L2tp, Self::Shadowsocks, Self::Vless];

    /// The stored spelling.
    #[must_use]
    pub fn as_db_str(self) -> &'static str {
        match self {
            Self::WireGuard => "wireguard",
            Self::OpenVpn => "openvpn",
            Self::Ikev2 => "ikev2",
            Self::L2tp => "l2tp",
            Self::Shadowsocks => "shadowsocks",
            Self::Vless => "vless",
        }
    }

    /// Reads the stored spelling.
    #[must_use]
    pub fn from_db_str(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|protocol| protocol.as_db_str() == stored)
    }
}

/// The caller-chosen fields of a new user; the server adds id and times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    /// See [`User::username`].
    pub username: String,
    /// See [`User::email`].
    pub email: String,
    /// See [`User::status`].
    pub status: UserStatus,
    /// See [`User::protocol`].
    pub protocol: VpnProtocol,
    /// See [`User::traffic_used_bytes`].
    pub traffic_used_bytes: u64,
    /// See [`User::traffic_limit_bytes`].
    pub traffic_limit_bytes: u64,
    /// See [`User::expires_at_micros`].
    pub expires_at_micros: Option<i64>,
    /// See [`User::note`].
    pub note: String,
}

impl NewUser {
    /// A new active WireGuard user with no limit, expiry or note.
    #[must_use]
    pub fn new(username: impl Into<String>, email: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            email: email.into(),
            status: UserStatus::Active,
            protocol: VpnProtocol::WireGuard,
            traffic_used_bytes: 0,
            traffic_limit_bytes: 0,
            expires_at_micros: None,
            note: String::new(),
        }
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), VpnUsersError> {
        validate_username(&self.username)?;
        validate_email(&self.email)?;
        validate_note(&self.note)?;
        validate_traffic("traffic_used_bytes", self.traffic_used_bytes)?;
        validate_traffic("traffic_limit_bytes", self.traffic_limit_bytes)?;
        if let Some(expires_at_micros) = self.expires_at_micros {
            validate_instant("expires_at", expires_at_micros)?;
        }
        Ok(())
    }

    /// The user this creates, with `id` and `now_micros` as its times.
    #[must_use]
    pub fn into_user(self, id: Uuid, now_micros: i64) -> User {
        User {
            id,
            username: self.username,
            email: self.email,
            status: self.status,
            protocol: self.protocol,
            traffic_used_bytes: self.traffic_used_bytes,
            traffic_limit_bytes: self.traffic_limit_bytes,
            expires_at_micros: self.expires_at_micros,
            created_at_micros: now_micros,
            updated_at_micros: now_micros,
            note: self.note,
        }
    }
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// New username.
    pub username: Option<String>,
    /// New email.
    pub email: Option<String>,
    /// New status.
    pub status: Option<UserStatus>,
    /// New protocol.
    pub protocol: Option<VpnProtocol>,
    /// New traffic used.
    pub traffic_used_bytes: Option<u64>,
    /// New traffic limit.
    pub traffic_limit_bytes: Option<u64>,
    /// New expiry: `Some(None)` clears it.
    pub expires_at_micros: Option<Option<i64>>,
    /// New note.
    pub note: Option<String>,
}

impl UserPatch {
    /// Whether the patch changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks every field present; the first problem found is returned.
    pub fn validate(&self) -> Result<(), VpnUsersError> {
        if self.is_empty() {
            return Err(VpnUsersError::EmptyUpdate);
        }
        if let Some(username) = &self.username {
            validate_username(username)?;
        }
        if let Some(email) = &self.email {
            validate_email(email)?;
        }
        if let Some(note) = &self.note {
            validate_note(note)?;
        }
        if let Some(bytes) = self.traffic_used_bytes {
            validate_traffic("traffic_used_bytes", bytes)?;
        }
        if let Some(bytes) = self.traffic_limit_bytes {
            validate_traffic("traffic_limit_bytes", bytes)?;
        }
        if let Some(Some(expires_at_micros)) = self.expires_at_micros {
            validate_instant("expires_at", expires_at_micros)?;
        }
        Ok(())
    }
}

/// 1 to 64 characters from `A-Z a-z 0-9 . _ - @`, starting with a letter or digit.
pub fn validate_username(username: &str) -> Result<(), VpnUsersError> {
    let invalid = |reason: &str| VpnUsersError::InvalidUsername { reason: reason.to_owned() };
    if username.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if username.len() > MAX_USERNAME_CHARS {
        return Err(invalid("must be at most 64 characters"));
    }
    if !username.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@')) {
        return Err(invalid("may hold only letters, digits and `.` `_` `-` `@`"));
    }
    if !username.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid("must start with a letter or digit"));
    }
    Ok(())
}

/// `local@domain`: at most 254 bytes, a 1..=64 byte local part of visible
/// characters, and a domain of dot-separated letter/digit/hyphen labels with
/// at least one dot. Deliberately simpler than RFC 5322: it refuses what a
/// mail server would, not every exotic address a spec allows.
pub fn validate_email(email: &str) -> Result<(), VpnUsersError> {
    let invalid = |reason: &str| VpnUsersError::InvalidEmail { reason: reason.to_owned() };
    if email.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if email.len() > MAX_EMAIL_BYTES {
        return Err(invalid("must be at most 254 bytes"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(invalid("must be local@domain"));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(invalid("local part must be 1 to 64 bytes"));
    }
    if !local
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'@' | b'"' | b'(' | b')' | b',' | b';' | b'<' | b'>'))
    {
        return Err(invalid("local part holds a character that is not allowed"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid("domain must contain a dot"));
    }
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !labels.iter().all(label_ok) {
        return Err(invalid("domain must be dot-separated labels of letters, digits and hyphens"));
    }
    Ok(())
}

/// At most 1024 bytes and no NUL (PostgreSQL text cannot hold one).
pub fn validate_note(note: &str) -> Result<(), VpnUsersError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(VpnUsersError::InvalidNote { reason: "must be at most 1024 bytes".to_owned() });
    }
    if note.contains('\0') {
        return Err(VpnUsersError::InvalidNote { reason: "must not contain NUL".to_owned() });
    }
    Ok(())
}

/// At most 2^63 - 1 bytes, what a signed 64-bit column holds.
pub fn validate_traffic(field: &'static str, bytes: u64) -> Result<(), VpnUsersError> {
    if bytes > MAX_TRAFFIC_BYTES {
        return Err(VpnUsersError::TrafficOutOfRange { field });
    }
    Ok(())
}

/// An instant the store can hold: before year 294247 and not the "never"
/// sentinel.
pub fn validate_instant(field: &'static str, micros: i64) -> Result<(), VpnUsersError> {
    if micros > MAX_INSTANT_MICROS {
        return Err(VpnUsersError::InvalidTimestamp { field });
    }
    Ok(())
}

/// The current time in microseconds since the Unix epoch.
#[must_use]
pub fn now_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(MAX_INSTANT_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_username(input: &str, valid: bool) {
        assert_eq!(validate_username(input).is_ok(), valid, "{input:?}");
    }

    fn check_email(input: &str, valid: bool) {
        assert_eq!(validate_email(input).is_ok(), valid, "{input:?}");
    }

    #[test]
    fn usernames() {
        check_username("alice", true);
        check_username("a", true);
        check_username("bob.smith-2_x@corp", true);
        check_username(&"x".repeat(64), true);
        check_username(&"x".repeat(65), false);
        check_username("", false);
        check_username(".alice", false);
        check_username("al ice", false);
        check_username("alïce", false);
        check_username("alice'; DROP TABLE vpn_users; --", false);
    }

    #[test]
    fn emails() {
        check_email("alice@example.com", true);
        check_email("a.b+tag@sub.example.co", true);
        check_email("alice", false);
        check_email("alice@", false);
        check_email("@example.com", false);
        check_email("alice@example", false);
        check_email("alice@@example.com", false);
        check_email("alice@exa mple.com", false);
        check_email("alice@-example.com", false);
        check_email("alice@example..com", false);
        check_email(&format!("{}@example.com", "a".repeat(65)), false);
        check_email(&format!("a@{}.com", "b".repeat(250)), false);
    }

    #[test]
    fn notes_traffic_and_instants() {
        assert!(validate_note(&"n".repeat(1024)).is_ok());
        assert!(validate_note(&"n".repeat(1025)).is_err());
        assert!(validate_note("a\0b").is_err());
        assert!(validate_traffic("traffic_used_bytes", MAX_TRAFFIC_BYTES).is_ok());
        assert!(validate_traffic("traffic_used_bytes", MAX_TRAFFIC_BYTES + 1).is_err());
        assert!(validate_instant("expires_at", i64::MAX).is_err());
    }

    #[test]
    fn stored_spellings_round_trip() {
        for status in UserStatus::ALL {
            assert_eq!(UserStatus::from_db_str(status.as_db_str()), Some(status));
        }
        for protocol in VpnProtocol::ALL {
            assert_eq!(VpnProtocol::from_db_str(protocol.as_db_str()), Some(protocol));
        }
        assert_eq!(UserStatus::from_db_str("ACTIVE"), None);
    }

    #[test]
    fn an_empty_patch_is_refused() {
        assert_eq!(UserPatch::default().validate().unwrap_err().reason(), "EMPTY_UPDATE");
        let patch = UserPatch { note: Some("hi".into()), ..UserPatch::default() };
        assert!(patch.validate().is_ok());
    }
}
