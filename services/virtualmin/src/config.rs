//! `VirtualminConfig`: the gateway's settings, read from `VIRTUALMIN_*` (the
//! names and defaults of the seed's configuration guide) or the `[virtualmin]`
//! table of the config file. Every field is re-read per call, so a reload
//! (file change or SIGHUP) applies to the next call.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_kit::config::duration_secs;
use mesh_kit::{ConfigProblem, ServiceConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Virtualmin's miniserv port.
const DEFAULT_PORT: u16 = 10_000;
/// Longest timeout accepted for any operation class: a day.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// miniserv drops new connections from an IP that already holds 25.
const MINISERV_MAX_CONNECTIONS_PER_IP: u32 = 25;

/// Settings of the `VirtualminGateway` service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VirtualminConfig {
    /// Single-domain reads, plans and server info, in seconds.
    #[serde(with = "duration_secs")]
    pub api_request_timeout: Duration,
    /// Health probes, in seconds.
    #[serde(with = "duration_secs")]
    pub api_health_check_timeout: Duration,
    /// backup-domain, in seconds.
    #[serde(with = "duration_secs")]
    pub api_backup_timeout: Duration,
    /// Calls that fan out over every configured server, in seconds.
    #[serde(with = "duration_secs")]
    pub api_bulk_timeout: Duration,
    /// Establishing the TCP and TLS connection, in seconds.
    #[serde(with = "duration_secs")]
    pub connection_timeout: Duration,
    /// Longest silence while a response body streams, in seconds.
    #[serde(with = "duration_secs")]
    pub read_timeout: Duration,
    /// Sending the request (connect included) until its body has been taken
    /// for the socket, in seconds; waiting for the reply is not counted.
    #[serde(with = "duration_secs")]
    pub write_timeout: Duration,
    /// create, delete, suspend, unsuspend and modify, in seconds.
    #[serde(with = "duration_secs")]
    pub provisioning_timeout: Duration,
    /// Domain listings, in seconds.
    #[serde(with = "duration_secs")]
    pub domain_sync_timeout: Duration,
    /// Bandwidth reports, in seconds.
    #[serde(with = "duration_secs")]
    pub usage_sync_timeout: Duration,
    /// Base delay before a retry, in seconds; doubled per attempt, with jitter.
    #[serde(with = "duration_secs")]
    pub retry_delay: Duration,
    /// Retries after the first attempt, for failures where a retry is safe.
    pub max_retries: u32,
    /// The per-server rate limit window, in seconds.
    #[serde(with = "duration_secs")]
    pub rate_limit_window: Duration,
    /// Requests allowed per server per window (every HTTP attempt counts).
    pub rate_limit_max_calls: u32,
    /// Concurrent requests per server.
    pub connection_pool_size: u32,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: u64,
    /// Calls slower than this are logged, in seconds.
    #[serde(with = "duration_secs")]
    pub slow_operation_threshold: Duration,
    /// Page size of `ListDomains` when the request names none.
    pub default_page_size: u32,
    /// Largest page size `ListDomains` accepts.
    pub max_page_size: u32,
    /// How long an idempotency key answers repeats of its call, in seconds.
    #[serde(with = "duration_secs")]
    pub idempotency_ttl: Duration,
    /// Most idempotency keys kept per kind of call; a new key beyond it is refused.
    pub idempotency_max_keys: u32,
    /// The Virtualmin servers this gateway may contact; no other host is ever contacted.
    pub servers: Vec<ServerEntry>,
}

impl Default for VirtualminConfig {
    fn default() -> Self {
        Self {
            api_request_timeout: Duration::from_secs(30),
            api_health_check_timeout: Duration::from_secs(10),
            api_backup_timeout: Duration::from_secs(300),
            api_bulk_timeout: Duration::from_secs(600),
            connection_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            provisioning_timeout: Duration::from_secs(180),
            domain_sync_timeout: Duration::from_secs(120),
            usage_sync_timeout: Duration::from_secs(60),
            retry_delay: Duration::from_secs(5),
            max_retries: 3,
            rate_limit_window: Duration::from_secs(3600),
            rate_limit_max_calls: 100,
            connection_pool_size: 10,
            max_response_bytes: 20 * 1024 * 1024,
            slow_operation_threshold: Duration::from_millis(100),
            default_page_size: 100,
            max_page_size: 1000,
            idempotency_ttl: Duration::from_secs(3600),
            idempotency_max_keys: 100_000,
            servers: Vec::new(),
        }
    }
}

/// Which timeout governs an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutClass {
    /// `api_request_timeout`.
    Request,
    /// `api_health_check_timeout`.
    HealthCheck,
    /// `api_backup_timeout`.
    Backup,
    /// `api_bulk_timeout`.
    Bulk,
    /// `provisioning_timeout`.
    Provisioning,
    /// `domain_sync_timeout`.
    DomainSync,
    /// `usage_sync_timeout`.
    UsageSync,
}

impl VirtualminConfig {
    /// The timeout of one class of operation.
    #[must_use]
    pub fn timeout_for(&self, class: TimeoutClass) -> Duration {
        match class {
            TimeoutClass::Request => self.api_request_timeout,
            TimeoutClass::HealthCheck => self.api_health_check_timeout,
            TimeoutClass::Backup => self.api_backup_timeout,
            TimeoutClass::Bulk => self.api_bulk_timeout,
            TimeoutClass::Provisioning => self.provisioning_timeout,
            TimeoutClass::DomainSync => self.domain_sync_timeout,
            TimeoutClass::UsageSync => self.usage_sync_timeout,
        }
    }

    /// The configured server with this id.
    #[must_use]
    pub fn server(&self, server_id: &str) -> Option<&ServerEntry> {
        self.servers.iter().find(|server| server.id == server_id)
    }
}

/// `https`, or `http` for a simulator on the loopback interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// TLS, verified against the OS roots, a private CA or a pinned certificate.
    #[default]
    Https,
    /// Plain HTTP; accepted only for loopback hosts, so credentials never cross a network in clear.
    Http,
}

impl Scheme {
    /// The URL scheme.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Http => "http",
        }
    }
}

/// One Virtualmin server. In the file: `[[virtualmin.servers]]`; in the
/// environment: `VIRTUALMIN_SERVERS='[{id=vm1,hostname=vm1.example.com,username=root,password_file=/run/secrets/vm1}]'`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// The id callers use (`[a-z0-9_-]`, 1 to 64 characters).
    pub id: String,
    /// The host name or IP address to contact.
    pub hostname: String,
    /// The miniserv port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `https` (default) or `http` (loopback only).
    #[serde(default)]
    pub scheme: Scheme,
    /// The Webmin user (a master administrator for the full API).
    pub username: String,
    /// The password inline; prefer `password_file` or `password_env`.
    #[serde(default)]
    pub password: Option<ConfigSecret>,
    /// A file holding the password (trailing newline ignored), e.g. a mounted secret.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A PEM file of CA certificates trusted instead of the OS roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server's leaf certificate (hex, colons allowed); when
    /// set, the certificate must match it and CA verification is not used.
    #[serde(default)]
    pub pinned_sha256: Option<String>,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

impl ServerEntry {
    /// True when the host is a loopback name or address.
    #[must_use]
    pub fn is_loopback(&self) -> bool {
        self.hostname.eq_ignore_ascii_case("localhost")
            || self.hostname.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The pinned fingerprint as 32 bytes, if one is configured and valid.
    #[must_use]
    pub fn pinned_fingerprint(&self) -> Option<[u8; 32]> {
        let hex: String = self.pinned_sha256.as_deref()?.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
        }
        Some(bytes)
    }

    fn problems(&self, problems: &mut Vec<ConfigProblem>) {
        let name = &self.id;
        let mut push = |message: String| problems.push(ConfigProblem::new("servers", message));
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !id_ok {
            push(format!("server id `{name}` must be 1 to 64 of [a-z0-9_-]"));
        }
        let host_ok = !self.hostname.is_empty()
            && self.hostname.len() <= 253
            && self.hostname.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        if !host_ok {
            push(format!(
                "server `{name}`: hostname must be a bare host name or IP address (no scheme, path or credentials)"
            ));
        }
        if self.port == 0 {
            push(format!("server `{name}`: port must be between 1 and 65535"));
        }
        if self.scheme == Scheme::Http && !self.is_loopback() {
            push(format!("server `{name}`: scheme http is only accepted for loopback hosts; use https"));
        }
        if self.username.is_empty() || self.username.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':') {
            push(format!("server `{name}`: username must be non-empty without whitespace or `:`"));
        }
        let password_sources = [self.password.is_some(), self.password_file.is_some(), self.password_env.is_some()]
            .into_iter()
            .filter(|set| *set)
            .count();
        if password_sources != 1 {
            push(format!("server `{name}`: set exactly one of password, password_file, password_env"));
        }
        if self.pinned_sha256.is_some() && self.pinned_fingerprint().is_none() {
            push(format!("server `{name}`: pinned_sha256 must be 64 hex digits (colons allowed)"));
        }
        if self.scheme == Scheme::Http && (self.pinned_sha256.is_some() || self.ca_file.is_some()) {
            push(format!("server `{name}`: ca_file and pinned_sha256 need scheme https"));
        }
    }
}

/// A secret read from configuration: never printed, compared only to detect
/// a reload, serialized as `[redacted]`.
#[derive(Clone)]
pub struct ConfigSecret(SecretString);

impl ConfigSecret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(secret: SecretString) -> Self {
        Self(secret)
    }

    /// The secret.
    #[must_use]
    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for ConfigSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

impl Serialize for ConfigSecret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for ConfigSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Self(SecretString::from(text)))
    }
}

impl ServiceConfig for VirtualminConfig {
    const FILE_SECTION: &'static str = "virtualmin";
    const ENV_PREFIX: &'static str = "VIRTUALMIN_";

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("api_request_timeout", self.api_request_timeout),
            ("api_health_check_timeout", self.api_health_check_timeout),
            ("api_backup_timeout", self.api_backup_timeout),
            ("api_bulk_timeout", self.api_bulk_timeout),
            ("connection_timeout", self.connection_timeout),
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
            ("provisioning_timeout", self.provisioning_timeout),
            ("domain_sync_timeout", self.domain_sync_timeout),
            ("usage_sync_timeout", self.usage_sync_timeout),
            ("rate_limit_window", self.rate_limit_window),
            ("idempotency_ttl", self.idempotency_ttl),
        ] {
            if value < Duration::from_millis(1) || value > MAX_TIMEOUT {
                problems.push(ConfigProblem::new(
                    field,
                    format!(
                        "must be between 0.001 and {} seconds (got {})",
                        MAX_TIMEOUT.as_secs(),
                        value.as_secs_f64()
                    ),
                ));
            }
        }
        if self.retry_delay > Duration::from_secs(600) {
            problems.push(ConfigProblem::new(
                "retry_delay",
                format!("must be between 0 and 600 seconds (got {})", self.retry_delay.as_secs_f64()),
            ));
        }
        ConfigProblem::check_range(&mut problems, "max_retries", self.max_retries, 0, 10);
        ConfigProblem::check_range(&mut problems, "rate_limit_max_calls", self.rate_limit_max_calls, 1, 1_000_000);
        ConfigProblem::check_range(
            &mut problems,
            "connection_pool_size",
            self.connection_pool_size,
            1,
            MINISERV_MAX_CONNECTIONS_PER_IP,
        );
        ConfigProblem::check_range(&mut problems, "max_response_bytes", self.max_response_bytes, 1024, 1 << 30);
        ConfigProblem::check_range(&mut problems, "max_page_size", self.max_page_size, 1, 100_000);
        ConfigProblem::check_range(&mut problems, "idempotency_max_keys", self.idempotency_max_keys, 1, 10_000_000);
        ConfigProblem::check_range(
            &mut problems,
            "default_page_size",
            self.default_page_size,
            1,
            self.max_page_size.max(1),
        );
        for server in &self.servers {
            server.problems(&mut problems);
        }
        for (index, server) in self.servers.iter().enumerate() {
            if self.servers[..index].iter().any(|earlier| earlier.id == server.id) {
                problems.push(ConfigProblem::new("servers", format!("server id `{}` is used twice", server.id)));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use mesh_kit::ConfigSource;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<VirtualminConfig, mesh_kit::ConfigError> {
        let source = vars.iter().fold(ConfigSource::default(), |s, (k, v)| s.with_var(*k, *v));
        mesh_kit::config::load(&source)
    }

    #[test]
    fn seed_defaults_are_valid() {
        let config = load(&[]).expect("defaults");
        assert_eq!(config.api_request_timeout, Duration::from_secs(30));
        assert_eq!(config.api_health_check_timeout, Duration::from_secs(10));
        assert_eq!(config.api_backup_timeout, Duration::from_secs(300));
        assert_eq!(config.api_bulk_timeout, Duration::from_secs(600));
        assert_eq!(config.connection_timeout, Duration::from_secs(15));
        assert_eq!(config.read_timeout, Duration::from_secs(30));
        assert_eq!(config.write_timeout, Duration::from_secs(30));
        assert_eq!(config.provisioning_timeout, Duration::from_secs(180));
        assert_eq!(config.domain_sync_timeout, Duration::from_secs(120));
        assert_eq!(config.usage_sync_timeout, Duration::from_secs(60));
        assert_eq!(config.retry_delay, Duration::from_secs(5));
        assert_eq!(config.max_retries, 3);
        assert_eq!(config.rate_limit_window, Duration::from_secs(3600));
        assert_eq!(config.rate_limit_max_calls, 100);
        assert_eq!(config.connection_pool_size, 10);
    }

    #[test]
    fn seed_variable_names_are_read() {
        let config = load(&[
            ("VIRTUALMIN_API_REQUEST_TIMEOUT", "45"),
            ("VIRTUALMIN_MAX_RETRIES", "1"),
            ("VIRTUALMIN_RETRY_DELAY", "0.25"),
            ("VIRTUALMIN_RATE_LIMIT_MAX_CALLS", "7"),
        ])
        .expect("valid");
        assert_eq!(config.api_request_timeout, Duration::from_secs(45));
        assert_eq!(config.max_retries, 1);
        assert_eq!(config.retry_delay, Duration::from_millis(250));
        assert_eq!(config.rate_limit_max_calls, 7);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let error = load(&[("VIRTUALMIN_API_REQUEST_TIMEOUT", "0")]).unwrap_err().to_string();
        assert!(error.contains("VIRTUALMIN_API_REQUEST_TIMEOUT: must be between"), "{error}");
        let error = load(&[("VIRTUALMIN_MAX_RETRIES", "-1")]).unwrap_err().to_string();
        assert!(error.contains("VIRTUALMIN_MAX_RETRIES"), "{error}");
        let error = load(&[("VIRTUALMIN_CONNECTION_POOL_SIZE", "40")]).unwrap_err().to_string();
        assert!(error.contains("VIRTUALMIN_CONNECTION_POOL_SIZE: must be between 1 and 25 (got 40)"), "{error}");
        let error = load(&[("VIRTUALMIN_READ_TIMEOUT", "soon")]).unwrap_err().to_string();
        assert!(error.contains("VIRTUALMIN_READ_TIMEOUT"), "{error}");
    }

    #[test]
    fn servers_come_from_one_variable() {
        let config = load(&[(
            "VIRTUALMIN_SERVERS",
            "[{id=vm1,hostname=vm1.example.com,username=root,password_env=VM1_PASSWORD},{id=sim,hostname=127.0.0.1,port=10001,scheme=http,username=root,password=s3cret}]",
        )])
        .expect("valid servers");
        assert_eq!(config.servers.len(), 2);
        assert_eq!(config.servers[0].port, 10_000);
        assert_eq!(config.servers[0].scheme, Scheme::Https);
        assert_eq!(config.servers[1].scheme, Scheme::Http);
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn plain_http_to_a_remote_host_is_refused() {
        let error =
            load(&[("VIRTUALMIN_SERVERS", "[{id=vm1,hostname=vm1.example.com,scheme=http,username=root,password=x}]")])
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("VIRTUALMIN_SERVERS: server `vm1`: scheme http is only accepted for loopback"),
            "{error}"
        );
    }

    #[test]
    fn server_entries_are_checked() {
        let error = load(&[(
            "VIRTUALMIN_SERVERS",
            "[{id=Bad,hostname=\"https://x\",username=root},{id=Bad,hostname=h,username=r,password=p,pinned_sha256=zz}]",
        )])
        .unwrap_err()
        .to_string();
        assert!(error.contains("must be 1 to 64"), "{error}");
        assert!(error.contains("bare host name"), "{error}");
        assert!(error.contains("exactly one of password"), "{error}");
        assert!(error.contains("pinned_sha256 must be 64 hex"), "{error}");
        assert!(error.contains("used twice"), "{error}");
    }

    #[test]
    fn fingerprints_accept_colons() {
        let entry = ServerEntry {
            id: "a".into(),
            hostname: "h".into(),
            port: 1,
            scheme: Scheme::Https,
            username: "u".into(),
            password: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            pinned_sha256: Some(["ab"; 32].join(":")),
        };
        assert_eq!(entry.pinned_fingerprint(), Some([0xab; 32]));
    }
}
