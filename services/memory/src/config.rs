//! `MemoryProfilerConfig`: the `MemoryProfiler`'s settings, read from
//! `MESH_MEMORY_*` (or the `[memory]` table of the config file) over the
//! seed's defaults.

use std::time::Duration;

use mesh_kit::config::duration_secs;
use mesh_kit::{ConfigProblem, ServiceConfig};
use serde::{Deserialize, Serialize};

use crate::target::{ProfileTarget, parse_targets};
use crate::trend::LeakCriteria;

const MIB: f64 = 1024.0 * 1024.0;

/// Settings for the `MemoryProfiler`. Names and defaults follow the seed's
/// `MemoryProfilerConfig(snapshot_interval, leak_detection_enabled,
/// leak_threshold_mb, max_snapshots)`; its `tracemalloc_enabled` is each
/// server's `MESH_SERVER_HEAP_PROFILING`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryProfilerConfig {
    /// The services to watch: comma-separated `name=http://host:port`.
    pub targets: String,
    /// Time between two snapshots of every target, in seconds (at least 1).
    #[serde(with = "duration_secs")]
    pub snapshot_interval: Duration,
    /// Snapshots kept per service; the oldest is dropped past it.
    pub max_snapshots: usize,
    /// Whether trends are judged for leaks.
    pub leak_detection_enabled: bool,
    /// Least growth over the leak window, in MiB, for a series to be a leak.
    pub leak_threshold_mb: f64,
    /// Snapshots in the leak window: the trend is fitted over the latest this many.
    pub leak_window: usize,
    /// Least R² of the window's line for a leak; lower values also flag noisier growth.
    pub leak_min_r_squared: f64,
    /// How long one target may take to answer, in seconds (capped at `snapshot_interval`).
    #[serde(with = "duration_secs")]
    pub probe_timeout: Duration,
    /// Health degrades when resident memory exceeds this share of the process's limit.
    pub high_usage_ratio: f64,
    /// Health is critical when resident memory exceeds this share of the limit.
    pub critical_usage_ratio: f64,
    /// Consumers listed in a report.
    pub top_consumers: usize,
    /// How long taking and symbolizing one service's heap profile may take, in seconds.
    #[serde(with = "duration_secs")]
    pub heap_profile_timeout: Duration,
    /// Functions listed per service when a report includes heap profiles.
    pub top_frames: usize,
}

impl Default for MemoryProfilerConfig {
    fn default() -> Self {
        Self {
            targets: String::new(),
            snapshot_interval: Duration::from_secs(300),
            max_snapshots: 100,
            leak_detection_enabled: true,
            leak_threshold_mb: 10.0,
            leak_window: 12,
            leak_min_r_squared: 0.8,
            probe_timeout: Duration::from_secs(5),
            high_usage_ratio: 0.8,
            critical_usage_ratio: 0.95,
            top_consumers: 10,
            heap_profile_timeout: Duration::from_secs(30),
            top_frames: 10,
        }
    }
}

impl MemoryProfilerConfig {
    /// The parsed targets; empty when `targets` is invalid (which `validate` reports).
    #[must_use]
    pub fn parsed_targets(&self) -> Vec<ProfileTarget> {
        parse_targets(&self.targets).unwrap_or_default()
    }

    /// What makes a trend a leak.
    #[must_use]
    pub fn leak_criteria(&self) -> LeakCriteria {
        LeakCriteria { threshold_bytes: self.leak_threshold_mb * MIB, min_r_squared: self.leak_min_r_squared }
    }

    /// How long one probe may take.
    #[must_use]
    pub fn effective_probe_timeout(&self) -> Duration {
        self.probe_timeout.min(self.snapshot_interval)
    }
}

impl ServiceConfig for MemoryProfilerConfig {
    const FILE_SECTION: &'static str = "memory";
    const ENV_PREFIX: &'static str = "MESH_MEMORY_";

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Err(problem) = parse_targets(&self.targets) {
            problems.push(ConfigProblem::new("targets", problem.to_string()));
        }
        if self.snapshot_interval < Duration::from_secs(1) || self.snapshot_interval > Duration::from_secs(86_400) {
            problems.push(ConfigProblem::new(
                "snapshot_interval",
                format!("must be between 1s and 1 day (got {:?})", self.snapshot_interval),
            ));
        }
        if self.probe_timeout < Duration::from_millis(10) {
            problems.push(ConfigProblem::new("probe_timeout", "must be at least 0.01s"));
        }
        ConfigProblem::check_range(&mut problems, "max_snapshots", self.max_snapshots, 2, 100_000);
        ConfigProblem::check_range(&mut problems, "leak_threshold_mb", self.leak_threshold_mb, 0.01, 1_048_576.0);
        ConfigProblem::check_range(&mut problems, "leak_window", self.leak_window, 3, self.max_snapshots.max(3));
        ConfigProblem::check_range(&mut problems, "leak_min_r_squared", self.leak_min_r_squared, 0.0, 1.0);
        ConfigProblem::check_range(&mut problems, "high_usage_ratio", self.high_usage_ratio, 0.01, 1.0);
        ConfigProblem::check_range(&mut problems, "critical_usage_ratio", self.critical_usage_ratio, 0.01, 1.0);
        if self.high_usage_ratio > self.critical_usage_ratio {
            problems.push(ConfigProblem::new("high_usage_ratio", "must not exceed critical_usage_ratio"));
        }
        ConfigProblem::check_range(&mut problems, "top_consumers", self.top_consumers, 1, 1000);
        ConfigProblem::check_range(&mut problems, "top_frames", self.top_frames, 1, 1000);
        if self.heap_profile_timeout < Duration::from_millis(100) {
            problems.push(ConfigProblem::new("heap_profile_timeout", "must be at least 0.1s"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use mesh_kit::ConfigSource;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<MemoryProfilerConfig, mesh_kit::ConfigError> {
        let source = vars.iter().fold(ConfigSource::default(), |s, (k, v)| s.with_var(*k, *v));
        mesh_kit::config::load(&source)
    }

    #[test]
    fn seed_defaults_are_valid() {
        let config = load(&[]).expect("defaults");
        assert_eq!(config.snapshot_interval, Duration::from_secs(300));
        assert_eq!(config.max_snapshots, 100);
        assert!(config.leak_detection_enabled);
        assert!((config.leak_criteria().threshold_bytes - 10.0 * MIB).abs() < 1.0);
        assert!(config.parsed_targets().is_empty());
    }

    #[test]
    fn targets_and_a_one_second_interval_are_accepted() {
        let config = load(&[
            ("MESH_MEMORY_TARGETS", "cache=http://127.0.0.1:50061, gateway=http://127.0.0.1:50051"),
            ("MESH_MEMORY_SNAPSHOT_INTERVAL", "1"),
        ])
        .unwrap();
        let names: Vec<_> = config.parsed_targets().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["cache", "gateway"]);
        assert_eq!(config.effective_probe_timeout(), Duration::from_secs(1));
    }

    #[test]
    fn problems_name_the_variable() {
        let error = load(&[("MESH_MEMORY_SNAPSHOT_INTERVAL", "0.5")]).unwrap_err().to_string();
        assert!(error.contains("MESH_MEMORY_SNAPSHOT_INTERVAL: must be between 1s and 1 day"), "{error}");
        let error = load(&[("MESH_MEMORY_TARGETS", "cache")]).unwrap_err().to_string();
        assert!(error.contains("MESH_MEMORY_TARGETS:"), "{error}");
        let error = load(&[("MESH_MEMORY_LEAK_WINDOW", "200")]).unwrap_err().to_string();
        assert!(error.contains("MESH_MEMORY_LEAK_WINDOW: must be between 3 and 100 (got 200)"), "{error}");
    }
}
