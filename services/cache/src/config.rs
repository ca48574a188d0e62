//! `CacheConfig`: the Cache service's settings, read from `MESH_CACHE_*`
//! (or the `[cache]` table of the config file) over the seed's defaults.

use std::time::Duration;

use mesh_kit::config::duration_secs;
use mesh_kit::{ConfigProblem, ServiceConfig};
use serde::{Deserialize, Serialize};

use crate::store::StoreLimits;

const MIB: f64 = 1024.0 * 1024.0;

/// Settings for the Cache service. Names and defaults follow the seed's
/// `CacheConfig(max_size, default_ttl, cleanup_interval, max_memory_mb)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Most entries held at once; least recently used entries are evicted above it.
    pub max_size: u64,
    /// Memory budget in MiB for keys, values, tags and per-entry overhead;
    /// a true bound, enforced by eviction.
    pub max_memory_mb: f64,
    /// TTL of a `Set` that carries none, in seconds.
    #[serde(with = "duration_secs")]
    pub default_ttl: Duration,
    /// Longest TTL a caller may ask for, in seconds.
    #[serde(with = "duration_secs")]
    pub max_ttl: Duration,
    /// How often expired entries are swept, in seconds (reads also expire lazily).
    #[serde(with = "duration_secs")]
    pub cleanup_interval: Duration,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most tags on one entry.
    pub max_tags_per_entry: usize,
    /// Longest tag, in bytes.
    pub max_tag_bytes: usize,
    /// Most keys or entries in one batch call (`GetMany`, `SetMany`, `DeleteMany`, a `Warm` message).
    pub max_batch_size: usize,
    /// Health degrades when the hit ratio falls below this (0 disables the check).
    pub min_hit_ratio: f64,
    /// Reads needed before the hit ratio is judged, so a cold cache is not "degraded".
    pub min_reads_for_hit_ratio: u64,
    /// Health degrades when memory use exceeds this fraction of the budget.
    pub memory_degraded_ratio: f64,
    /// Lease lifetime when `GetOrLease` names none, in seconds.
    #[serde(with = "duration_secs")]
    pub default_lease_ttl: Duration,
    /// Longest lease a caller may ask for, in seconds.
    #[serde(with = "duration_secs")]
    pub max_lease_ttl: Duration,
    /// Longest a `GetOrLease` caller may wait for another caller's lease, in seconds.
    #[serde(with = "duration_secs")]
    pub max_lease_wait: Duration,
    /// Most leases outstanding at once.
    pub max_leases: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_size: 10_000,
            max_memory_mb: 100.0,
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            cleanup_interval: Duration::from_secs(60),
            max_key_bytes: 1024,
            max_value_bytes: 4 * 1024 * 1024,
            max_tags_per_entry: 32,
            max_tag_bytes: 256,
            max_batch_size: 1000,
            min_hit_ratio: 0.5,
            min_reads_for_hit_ratio: 100,
            memory_degraded_ratio: 0.9,
            default_lease_ttl: Duration::from_secs(30),
            max_lease_ttl: Duration::from_secs(300),
            max_lease_wait: Duration::from_secs(30),
            max_leases: 100_000,
        }
    }
}

impl CacheConfig {
    /// The memory budget in bytes.
    #[must_use]
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // validated to 0.01..=65536 MiB
    pub fn memory_budget_bytes(&self) -> u64 {
        (self.max_memory_mb * MIB) as u64
    }

    /// The store's bounds.
    #[must_use]
    pub fn store_limits(&self) -> StoreLimits {
        StoreLimits {
            memory_budget_bytes: self.memory_budget_bytes(),
            max_entries: self.max_size,
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_tags_per_entry: self.max_tags_per_entry,
            max_tag_bytes: self.max_tag_bytes,
        }
    }
}

impl ServiceConfig for CacheConfig {
    const FILE_SECTION: &'static str = "cache";
    const ENV_PREFIX: &'static str = "MESH_CACHE_";

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        ConfigProblem::check_range(&mut problems, "max_size", self.max_size, 1, 100_000_000);
        ConfigProblem::check_range(&mut problems, "max_memory_mb", self.max_memory_mb, 0.01, 65_536.0);
        ConfigProblem::check_range(&mut problems, "max_key_bytes", self.max_key_bytes, 1, 64 * 1024);
        ConfigProblem::check_range(&mut problems, "max_value_bytes", self.max_value_bytes, 1, 64 * 1024 * 1024);
        ConfigProblem::check_range(&mut problems, "max_tags_per_entry", self.max_tags_per_entry, 0, 1024);
        ConfigProblem::check_range(&mut problems, "max_tag_bytes", self.max_tag_bytes, 1, 4096);
        ConfigProblem::check_range(&mut problems, "max_batch_size", self.max_batch_size, 1, 100_000);
        ConfigProblem::check_range(&mut problems, "min_hit_ratio", self.min_hit_ratio, 0.0, 1.0);
        ConfigProblem::check_range(&mut problems, "memory_degraded_ratio", self.memory_degraded_ratio, 0.01, 1.0);
        ConfigProblem::check_range(&mut problems, "max_leases", self.max_leases, 1, 10_000_000);
        for (field, value) in [
            ("default_ttl", self.default_ttl),
            ("max_ttl", self.max_ttl),
            ("cleanup_interval", self.cleanup_interval),
            ("default_lease_ttl", self.default_lease_ttl),
            ("max_lease_ttl", self.max_lease_ttl),
        ] {
            if value.is_zero() {
                problems.push(ConfigProblem::new(field, "must be greater than 0"));
            }
        }
        if self.default_ttl > self.max_ttl {
            problems.push(ConfigProblem::new(
                "default_ttl",
                format!("must not exceed max_ttl ({:?} > {:?})", self.default_ttl, self.max_ttl),
            ));
        }
        if self.default_lease_ttl > self.max_lease_ttl {
            problems.push(ConfigProblem::new("default_lease_ttl", "must not exceed max_lease_ttl"));
        }
        #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
        let value_mb = self.max_value_bytes as f64 / MIB;
        if value_mb * 4.0 > self.max_memory_mb {
            problems.push(ConfigProblem::new(
                "max_value_bytes",
                format!(
                    "must be at most a quarter of max_memory_mb ({} bytes > {:.2} MiB / 4); lower it or raise the budget",
                    self.max_value_bytes, self.max_memory_mb
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use mesh_kit::ConfigSource;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<CacheConfig, mesh_kit::ConfigError> {
        let source = vars.iter().fold(ConfigSource::default(), |s, (k, v)| s.with_var(*k, *v));
        mesh_kit::config::load(&source)
    }

    #[test]
    fn seed_defaults_are_valid() {
        let config = load(&[]).expect("defaults");
        assert_eq!(config.max_size, 10_000);
        assert_eq!(config.default_ttl, Duration::from_secs(300));
        assert_eq!(config.cleanup_interval, Duration::from_secs(60));
        assert_eq!(config.memory_budget_bytes(), 100 * 1024 * 1024);
    }

    #[test]
    fn fractional_budgets_and_seconds_are_accepted() {
        let config = load(&[
            ("MESH_CACHE_MAX_MEMORY_MB", "2.5"),
            ("MESH_CACHE_DEFAULT_TTL", "1.5"),
            ("MESH_CACHE_MAX_VALUE_BYTES", "1024"),
        ])
        .unwrap();
        assert_eq!(config.memory_budget_bytes(), 2_621_440);
        assert_eq!(config.default_ttl, Duration::from_millis(1500));
    }

    #[test]
    fn problems_name_the_variable() {
        let error = load(&[("MESH_CACHE_MAX_SIZE", "0")]).unwrap_err().to_string();
        assert!(error.contains("MESH_CACHE_MAX_SIZE: must be between 1 and 100000000 (got 0)"), "{error}");
        let error = load(&[("MESH_CACHE_MAX_MEMORY_MB", "1")]).unwrap_err().to_string();
        assert!(error.contains("MESH_CACHE_MAX_VALUE_BYTES"), "{error}");
    }
}
