//! `VpnUsersConfig`: the VpnUsers service's settings, read from
//! `MESH_VPNUSERS_*` (or the `[vpnusers]` table of the config file) over the
//! defaults. The conventional `DATABASE_URL` is accepted as an alias of
//! `MESH_VPNUSERS_DATABASE_URL` (see [`with_aliases`]).

use std::path::PathBuf;
use std::time::Duration;

use mesh_kit::config::duration_secs;
// Shared with every service that has a database; re-exported so callers keep `mesh_vpnusers::DatabaseUrl`.
pub use mesh_kit::database::{DatabaseLocation, DatabaseUrl};
use mesh_kit::{ConfigProblem, ConfigSource, ServiceConfig};
use serde::{Deserialize, Serialize};

/// The environment variable most tools use for a database URL.
pub const DATABASE_URL_ALIAS: &str = "DATABASE_URL";
/// The service's own name for it.
pub const DATABASE_URL_VAR: &str = "MESH_VPNUSERS_DATABASE_URL";
/// The SQLite file created under `data_dir` when no database URL is set.
pub const SQLITE_FILE_NAME: &str = "vpnusers.sqlite3";

/// Longest `idempotency_ttl`.
const MAX_IDEMPOTENCY_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Settings for the VpnUsers service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VpnUsersConfig {
    /// `postgres://user:password@host/db` (or `sqlite://path`); empty means
    /// the embedded SQLite file under `data_dir` (*restart*).
    pub database_url: DatabaseUrl,
    /// Directory of the embedded SQLite database, created if missing (*restart*).
    pub data_dir: PathBuf,
    /// Most pooled database connections (*restart*).
    pub max_connections: u32,
    /// How long to wait for a database connection, in seconds (*restart*).
    #[serde(with = "duration_secs")]
    pub connect_timeout: Duration,
    /// Most items in one CreateUsers, UpdateUsers, DeleteUsers or GetUsers call.
    pub max_batch_size: usize,
    /// Most ids in one SetStatus call.
    pub max_bulk_ids: usize,
    /// Page size when a request asks for 0.
    pub default_page_size: u32,
    /// Largest page a request may ask for.
    pub max_page_size: u32,
    /// `http://host:port` of the Cache service; empty means no cache (*restart*).
    pub cache_endpoint: String,
    /// How long a user stays in the cache, in seconds.
    #[serde(with = "duration_secs")]
    pub cache_ttl: Duration,
    /// Longest a cache call may take before the database serves instead, in seconds.
    #[serde(with = "duration_secs")]
    pub cache_timeout: Duration,
    /// After a failed cache call, how long reads skip the cache before trying
    /// it again, in seconds.
    #[serde(with = "duration_secs")]
    pub cache_retry_after: Duration,
    /// Whether a PostgreSQL commit waits until its WAL is on disk
    /// (`synchronous_commit`). On by default: every acknowledged write survives
    /// a power loss. Turning it off is the documented opt-out for write-heavy
    /// loads: a batch then does not wait for an fsync (3–5 ms on a plain disk,
    /// the floor of each sequential batch), and a crash of the machine may lose
    /// the last fraction of a second of acknowledged commits, never integrity;
    /// that is the guarantee of the embedded SQLite (WAL, `synchronous = NORMAL`).
    pub postgres_synchronous_commit: bool,
    /// How long a `request_id` of CreateUsers, UpdateUsers or DeleteUsers is
    /// remembered with its response, in seconds; a retry after that writes again.
    #[serde(with = "duration_secs")]
    pub idempotency_ttl: Duration,
}

impl Default for VpnUsersConfig {
    fn default() -> Self {
        Self {
            database_url: DatabaseUrl::default(),
            data_dir: PathBuf::from("data"),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            max_batch_size: 100,
            max_bulk_ids: 10_000,
            default_page_size: 50,
            max_page_size: 1000,
            cache_endpoint: String::new(),
            cache_ttl: Duration::from_secs(60),
            cache_timeout: Duration::from_millis(250),
            cache_retry_after: Duration::from_secs(5),
            postgres_synchronous_commit: true,
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl VpnUsersConfig {
    /// Where the data lives.
    #[must_use]
    pub fn database_location(&self) -> DatabaseLocation {
        DatabaseLocation::from_settings(&self.database_url, &self.data_dir, SQLITE_FILE_NAME)
    }

    /// The Cache service endpoint, if one is configured.
    #[must_use]
    pub fn cache_endpoint(&self) -> Option<&str> {
        Some(self.cache_endpoint.as_str()).filter(|endpoint| !endpoint.is_empty())
    }
}

impl ServiceConfig for VpnUsersConfig {
    const FILE_SECTION: &'static str = "vpnusers";
    const ENV_PREFIX: &'static str = "MESH_VPNUSERS_";

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        DatabaseLocation::check_settings(&mut problems, &self.database_url, &self.data_dir);
        ConfigProblem::check_range(&mut problems, "max_connections", self.max_connections, 1, 1000);
        ConfigProblem::check_range(&mut problems, "max_batch_size", self.max_batch_size, 1, 10_000);
        // SQLite binds at most 32766 parameters per statement.
        ConfigProblem::check_range(&mut problems, "max_bulk_ids", self.max_bulk_ids, 1, 30_000);
        ConfigProblem::check_range(&mut problems, "max_page_size", self.max_page_size, 1, 10_000);
        ConfigProblem::check_range(&mut problems, "default_page_size", self.default_page_size, 1, self.max_page_size);
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("cache_ttl", self.cache_ttl),
            ("cache_timeout", self.cache_timeout),
            ("idempotency_ttl", self.idempotency_ttl),
        ] {
            if value.is_zero() {
                problems.push(ConfigProblem::new(field, "must be greater than 0"));
            }
        }
        // Every key lives in the database until it expires; a month bounds the table.
        if self.idempotency_ttl > MAX_IDEMPOTENCY_TTL {
            problems.push(ConfigProblem::new("idempotency_ttl", "must be at most 2592000 seconds (30 days)"));
        }
        if let Some(endpoint) = self.cache_endpoint()
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(ConfigProblem::new("cache_endpoint", "must be http://host:port (or empty for no cache)"));
        }
        problems
    }
}

/// `source` with `DATABASE_URL` copied to `MESH_VPNUSERS_DATABASE_URL` when
/// only the former is set, so the conventional name works and the service's
/// own name wins when both are.
#[must_use]
pub fn with_aliases(source: &ConfigSource) -> ConfigSource {
    match (source.var(DATABASE_URL_VAR), source.var(DATABASE_URL_ALIAS)) {
        (None, Some(url)) => source.clone().with_var(DATABASE_URL_VAR, url),
        _ => source.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<VpnUsersConfig, mesh_kit::ConfigError> {
        let source = vars.iter().fold(ConfigSource::default(), |s, (k, v)| s.with_var(*k, *v));
        mesh_kit::config::load(&with_aliases(&source))
    }

    #[test]
    fn defaults_are_sqlite_under_data_without_cache() {
        let config = load(&[]).expect("defaults");
        assert_eq!(config.database_location(), DatabaseLocation::SqliteFile(PathBuf::from("data/vpnusers.sqlite3")));
        assert_eq!(config.max_batch_size, 100);
        assert_eq!(config.cache_endpoint(), None);
        assert!(config.postgres_synchronous_commit, "commits are durable unless opted out");
    }

    #[test]
    fn database_url_alias_applies_unless_the_own_name_is_set() {
        let config = load(&[("DATABASE_URL", "postgres://u:p@h/db")]).unwrap();
        assert!(config.database_url.is_postgres());
        let config =
            load(&[("DATABASE_URL", "postgres://u:p@h/db"), ("MESH_VPNUSERS_DATABASE_URL", "sqlite://x.db")]).unwrap();
        assert_eq!(config.database_url.expose(), "sqlite://x.db");
    }

    #[test]
    fn problems_name_the_variable() {
        let error = load(&[("MESH_VPNUSERS_MAX_BATCH_SIZE", "0")]).unwrap_err().to_string();
        assert!(error.contains("MESH_VPNUSERS_MAX_BATCH_SIZE: must be between 1 and 10000 (got 0)"), "{error}");
        let error = load(&[("MESH_VPNUSERS_DATABASE_URL", "mysql://x")]).unwrap_err().to_string();
        assert!(error.contains("MESH_VPNUSERS_DATABASE_URL"), "{error}");
        let error = load(&[("MESH_VPNUSERS_CACHE_ENDPOINT", "cache:50061")]).unwrap_err().to_string();
        assert!(error.contains("MESH_VPNUSERS_CACHE_ENDPOINT"), "{error}");
    }

    #[test]
    fn passwords_never_print() {
        let url = DatabaseUrl::new("postgres://mesh:hunter2@127.0.0.1:5432/users");
        assert_eq!(url.redacted(), "postgres://mesh:***@127.0.0.1:5432/users");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        let config = VpnUsersConfig { database_url: url, ..VpnUsersConfig::default() };
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(DatabaseUrl::new("postgres://h/db").redacted(), "postgres://h/db");
    }
}
