//! `BulkOpsConfig`: the BulkOps service's settings, read from `MESH_BULKOPS_*`
//! (or the `[bulkops]` table of the config file) over the defaults. The
//! seed's `VIRTUALMIN_API_BULK_TIMEOUT` sets `api_bulk_timeout` unless
//! `MESH_BULKOPS_API_BULK_TIMEOUT` does (see [`with_aliases`]).

use std::path::PathBuf;
use std::time::Duration;

use mesh_kit::config::duration_secs;
pub use mesh_kit::database::{DatabaseLocation, DatabaseUrl};
use mesh_kit::{ConfigProblem, ConfigSource, ServiceConfig};
use serde::{Deserialize, Serialize};

/// The seed's name for the bound on a bulk job.
pub const BULK_TIMEOUT_ALIAS: &str = "VIRTUALMIN_API_BULK_TIMEOUT";
/// The service's own name for it.
pub const BULK_TIMEOUT_VAR: &str = "MESH_BULKOPS_API_BULK_TIMEOUT";
/// The SQLite file created under `data_dir` when no database URL is set.
pub const SQLITE_FILE_NAME: &str = "bulkops.sqlite3";

/// Settings for the BulkOps service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkOpsConfig {
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
    /// `http://host:port` of the VirtualminGateway service. Required (*restart*).
    pub virtualmin_endpoint: String,
    /// The largest `max_concurrency` a job may ask for.
    pub max_concurrency: u32,
    /// The concurrency of a job that asks for 0.
    pub default_concurrency: u32,
    /// Most targets in one job.
    pub max_targets: usize,
    /// The longest a job may run, in seconds, from its start; then no new
    /// target is started and the job ends (an ATOMIC job undoing its work).
    #[serde(with = "duration_secs")]
    pub api_bulk_timeout: Duration,
    /// How long a replica's claim on a job lasts without renewal, in seconds.
    /// After a crash, another replica (or the restarted one) takes the job
    /// over once the lease has expired.
    #[serde(with = "duration_secs")]
    pub lease_duration: Duration,
    /// How often an idle replica looks for jobs to run, in seconds.
    #[serde(with = "duration_secs")]
    pub poll_interval: Duration,
    /// How often a running backup's operation is polled, in seconds.
    #[serde(with = "duration_secs")]
    pub backup_poll_interval: Duration,
}

impl Default for BulkOpsConfig {
    fn default() -> Self {
        Self {
            database_url: DatabaseUrl::default(),
            data_dir: PathBuf::from("data"),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            virtualmin_endpoint: String::new(),
            max_concurrency: 64,
            default_concurrency: 16,
            max_targets: 100_000,
            api_bulk_timeout: Duration::from_secs(600),
            lease_duration: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            backup_poll_interval: Duration::from_millis(500),
        }
    }
}

impl BulkOpsConfig {
    /// Where the jobs live.
    #[must_use]
    pub fn database_location(&self) -> DatabaseLocation {
        DatabaseLocation::from_settings(&self.database_url, &self.data_dir, SQLITE_FILE_NAME)
    }
}

impl ServiceConfig for BulkOpsConfig {
    const FILE_SECTION: &'static str = "bulkops";
    const ENV_PREFIX: &'static str = "MESH_BULKOPS_";

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        DatabaseLocation::check_settings(&mut problems, &self.database_url, &self.data_dir);
        if !(self.virtualmin_endpoint.starts_with("http://") || self.virtualmin_endpoint.starts_with("https://")) {
            problems.push(ConfigProblem::new(
                "virtualmin_endpoint",
                "is required: the VirtualminGateway service as http://host:port",
            ));
        }
        ConfigProblem::check_range(&mut problems, "max_connections", self.max_connections, 1, 1000);
        ConfigProblem::check_range(&mut problems, "max_concurrency", self.max_concurrency, 1, 1024);
        ConfigProblem::check_range(
            &mut problems,
            "default_concurrency",
            self.default_concurrency,
            1,
            self.max_concurrency,
        );
        ConfigProblem::check_range(&mut problems, "max_targets", self.max_targets, 1, 1_000_000);
        if self.api_bulk_timeout.is_zero() || self.api_bulk_timeout > Duration::from_secs(7 * 86_400) {
            problems.push(ConfigProblem::new(
                "api_bulk_timeout",
                format!("must be between 1 and 604800 seconds (also settable as {BULK_TIMEOUT_ALIAS})"),
            ));
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("lease_duration", self.lease_duration),
            ("poll_interval", self.poll_interval),
            ("backup_poll_interval", self.backup_poll_interval),
        ] {
            if value.is_zero() {
                problems.push(ConfigProblem::new(field, "must be greater than 0"));
            }
        }
        problems
    }
}

/// `source` with `VIRTUALMIN_API_BULK_TIMEOUT` copied to
/// `MESH_BULKOPS_API_BULK_TIMEOUT` when only the former is set, so the seed's
/// name works and the service's own name wins when both are.
#[must_use]
pub fn with_aliases(source: &ConfigSource) -> ConfigSource {
    match (source.var(BULK_TIMEOUT_VAR), source.var(BULK_TIMEOUT_ALIAS)) {
        (None, Some(timeout)) => source.clone().with_var(BULK_TIMEOUT_VAR, timeout),
        _ => source.clone(),
    }
}

/// Loads and validates the settings from `source`, aliases included.
pub fn load(source: &ConfigSource) -> Result<BulkOpsConfig, mesh_kit::ConfigError> {
    mesh_kit::config::load(&with_aliases(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_vars(vars: &[(&str, &str)]) -> Result<BulkOpsConfig, mesh_kit::ConfigError> {
        let source = vars.iter().fold(ConfigSource::default(), |s, (k, v)| s.with_var(*k, *v));
        load(&source)
    }

    const ENDPOINT: (&str, &str) = ("MESH_BULKOPS_VIRTUALMIN_ENDPOINT", "http://127.0.0.1:50063");

    #[test]
    fn defaults_are_sqlite_under_data_with_a_ten_minute_bound() {
        let config = load_vars(&[ENDPOINT]).expect("defaults");
        assert_eq!(config.database_location(), DatabaseLocation::SqliteFile(PathBuf::from("data/bulkops.sqlite3")));
        assert_eq!(config.api_bulk_timeout, Duration::from_secs(600));
        assert_eq!(config.default_concurrency, 16);
    }

    #[test]
    fn the_virtualmin_endpoint_is_required() {
        let error = load_vars(&[]).unwrap_err().to_string();
        assert!(error.contains("MESH_BULKOPS_VIRTUALMIN_ENDPOINT") && error.contains("is required"), "{error}");
    }

    #[test]
    fn the_seed_bulk_timeout_applies_unless_the_own_name_is_set() {
        let config = load_vars(&[ENDPOINT, ("VIRTUALMIN_API_BULK_TIMEOUT", "42")]).unwrap();
        assert_eq!(config.api_bulk_timeout, Duration::from_secs(42));
        let config =
            load_vars(&[ENDPOINT, ("VIRTUALMIN_API_BULK_TIMEOUT", "42"), ("MESH_BULKOPS_API_BULK_TIMEOUT", "7")])
                .unwrap();
        assert_eq!(config.api_bulk_timeout, Duration::from_secs(7));
        let error = load_vars(&[ENDPOINT, ("VIRTUALMIN_API_BULK_TIMEOUT", "0")]).unwrap_err().to_string();
        assert!(error.contains("VIRTUALMIN_API_BULK_TIMEOUT"), "{error}");
    }

    #[test]
    fn problems_name_the_variable() {
        let error = load_vars(&[ENDPOINT, ("MESH_BULKOPS_MAX_CONCURRENCY", "0")]).unwrap_err().to_string();
        assert!(error.contains("MESH_BULKOPS_MAX_CONCURRENCY: must be between 1 and 1024 (got 0)"), "{error}");
        let error = load_vars(&[ENDPOINT, ("MESH_BULKOPS_DATABASE_URL", "mysql://x")]).unwrap_err().to_string();
        assert!(error.contains("MESH_BULKOPS_DATABASE_URL"), "{error}");
    }

    #[test]
    fn passwords_never_print() {
        let config = BulkOpsConfig {
            database_url: DatabaseUrl::new("postgres://mesh:hunter2@127.0.0.1/bulk"),
            ..BulkOpsConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
