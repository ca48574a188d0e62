//! `DockerConfig`: the `DockerOps` service's settings, read from `MESH_DOCKER_*`
//! (or the `[docker]` table of the config file) over the defaults below.
//! The engine address also honours the standard `DOCKER_HOST` variable.

use std::time::Duration;

use mesh_kit::config::duration_secs;
use mesh_kit::{ConfigError, ConfigProblem, ConfigSource, ServiceConfig};
use serde::{Deserialize, Serialize};

use crate::scope::{LabelSelector, ManagementScope};

/// The local engine's socket, used when neither `MESH_DOCKER_HOST` nor
/// `DOCKER_HOST` is set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// The standard variable naming the engine, as the docker CLI reads it.
pub const DOCKER_HOST_VAR: &str = "DOCKER_HOST";

/// Settings for the `DockerOps` service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// The engine's address, `unix:///path/to/docker.sock` or
    /// `tcp://host:port` (plain HTTP). Defaults to `DOCKER_HOST`, then the
    /// local socket.
    pub host: String,
    /// The label, `key=value` (or `key` for presence), that puts a container
    /// in this service's scope; created containers get it.
    pub managed_label: String,
    /// An optional second label, `key=value`, narrowing the scope to one
    /// namespace (several meshes on one engine); empty means none.
    pub namespace_label: String,
    /// Containers a batch call acts on at once when the request says 0.
    pub default_max_concurrent: u32,
    /// The most containers a batch call acts on at once; larger requests are
    /// lowered to it.
    pub max_concurrent_cap: u32,
    /// Most containers (or specs) in one batch call.
    pub max_batch_size: usize,
    /// Stop timeout of a stop or restart that names none, in seconds.
    #[serde(with = "duration_secs")]
    pub default_stop_timeout: Duration,
    /// Longest stop timeout a caller may ask for, in seconds.
    #[serde(with = "duration_secs")]
    pub max_stop_timeout: Duration,
    /// CPU sample window of a `GetStats` that names none, in seconds.
    #[serde(with = "duration_secs")]
    pub default_cpu_sample_window: Duration,
    /// How long connecting to the engine (and agreeing on its API version) may take.
    #[serde(with = "duration_secs")]
    pub connect_timeout: Duration,
    /// How long one engine call may take, on top of its stop timeout.
    #[serde(with = "duration_secs")]
    pub request_timeout: Duration,
    /// How long a container's live stats feed runs after the last `GetStats`
    /// that asked about it, in seconds; 0 turns feeds off (every call samples).
    #[serde(with = "duration_secs")]
    pub stats_feed_idle: Duration,
    /// Most live stats feeds at once; containers beyond it are sampled per call.
    pub max_stats_feeds: usize,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: DEFAULT_DOCKER_HOST.to_owned(),
            managed_label: "mesh.managed=true".to_owned(),
            namespace_label: String::new(),
            default_max_concurrent: 5,
            max_concurrent_cap: 10,
            max_batch_size: 100,
            default_stop_timeout: Duration::from_secs(10),
            max_stop_timeout: Duration::from_secs(120),
            default_cpu_sample_window: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            stats_feed_idle: Duration::from_secs(60),
            max_stats_feeds: 256,
        }
    }
}

impl DockerConfig {
    /// Loads the settings from `source`, with `DOCKER_HOST` standing in for
    /// `MESH_DOCKER_HOST` when only the former is set.
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        mesh_kit::config::load(&Self::with_docker_host(source.clone()))
    }

    /// `source` with `MESH_DOCKER_HOST` taken from `DOCKER_HOST` when unset,
    /// so the kit's loader (and its reloads) see one setting.
    #[must_use]
    pub fn with_docker_host(source: ConfigSource) -> ConfigSource {
        let mesh_host_var = format!("{}HOST", Self::ENV_PREFIX);
        match (source.var(&mesh_host_var), source.var(DOCKER_HOST_VAR)) {
            (None, Some(docker_host)) => {
                let docker_host = docker_host.to_owned();
                source.with_var(mesh_host_var, docker_host)
            }
            _ => source,
        }
    }

    /// The scope built from the label settings.
    ///
    /// # Panics
    /// Never for settings that passed `validate`, which parses the labels.
    #[must_use]
    pub fn scope(&self) -> ManagementScope {
        let managed = LabelSelector::parse(&self.managed_label).expect("managed_label is validated");
        let namespace = (!self.namespace_label.is_empty())
            .then(|| LabelSelector::parse(&self.namespace_label).expect("namespace_label is validated"));
        ManagementScope::new(managed, namespace)
    }
}

impl ServiceConfig for DockerConfig {
    const FILE_SECTION: &'static str = "docker";
    const ENV_PREFIX: &'static str = "MESH_DOCKER_";

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if !(self.host.starts_with("unix:///") || self.host.starts_with("tcp://") || self.host.starts_with("http://")) {
            problems.push(ConfigProblem::new("host", "must start with unix:///, tcp:// or http://"));
        }
        if let Err(error) = LabelSelector::parse(&self.managed_label) {
            problems.push(ConfigProblem::new("managed_label", format!("must be key=value or key: {error}")));
        }
        if !self.namespace_label.is_empty() {
            match LabelSelector::parse(&self.namespace_label) {
                Ok(selector) if selector.value.is_none() => {
                    problems.push(ConfigProblem::new("namespace_label", "must be key=value"));
                }
                Ok(_) => {}
                Err(error) => {
                    problems.push(ConfigProblem::new("namespace_label", format!("must be key=value: {error}")));
                }
            }
        }
        ConfigProblem::check_range(&mut problems, "max_concurrent_cap", self.max_concurrent_cap, 1, 64);
        ConfigProblem::check_range(
            &mut problems,
            "default_max_concurrent",
            self.default_max_concurrent,
            1,
            self.max_concurrent_cap.max(1),
        );
        ConfigProblem::check_range(&mut problems, "max_batch_size", self.max_batch_size, 1, 10_000);
        ConfigProblem::check_range(&mut problems, "max_stats_feeds", self.max_stats_feeds, 0, 10_000);
        if self.max_stop_timeout > Duration::from_secs(3600) {
            problems.push(ConfigProblem::new("max_stop_timeout", "must be at most 3600s"));
        }
        if self.default_stop_timeout > self.max_stop_timeout {
            problems.push(ConfigProblem::new("default_stop_timeout", "must not exceed max_stop_timeout"));
        }
        if self.default_cpu_sample_window > crate::MAX_CPU_SAMPLE_WINDOW {
            problems.push(ConfigProblem::new("default_cpu_sample_window", "must be at most 10s"));
        }
        for (field, value) in [("connect_timeout", self.connect_timeout), ("request_timeout", self.request_timeout)] {
            if value < Duration::from_millis(100) {
                problems.push(ConfigProblem::new(field, format!("must be at least 0.1s (got {value:?})")));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<DockerConfig, ConfigError> {
        let source = vars.iter().fold(ConfigSource::default(), |s, (k, v)| s.with_var(*k, *v));
        DockerConfig::load(&source)
    }

    #[test]
    fn defaults_are_valid() {
        let config = load(&[]).expect("defaults");
        assert_eq!(config.host, DEFAULT_DOCKER_HOST);
        assert_eq!(config.default_max_concurrent, 5);
        assert_eq!(config.max_concurrent_cap, 10);
        assert_eq!(config.scope().to_string(), "`mesh.managed=true`");
    }

    #[test]
    fn docker_host_is_honoured_unless_the_mesh_variable_is_set() {
        assert_eq!(load(&[("DOCKER_HOST", "tcp://10.0.0.1:2375")]).unwrap().host, "tcp://10.0.0.1:2375");
        let both = load(&[("DOCKER_HOST", "tcp://10.0.0.1:2375"), ("MESH_DOCKER_HOST", "unix:///run/d.sock")]);
        assert_eq!(both.unwrap().host, "unix:///run/d.sock");
    }

    #[test]
    fn problems_name_the_variable() {
        let error = load(&[("DOCKER_HOST", "ssh://box")]).unwrap_err().to_string();
        assert!(error.contains("MESH_DOCKER_HOST: must start with"), "{error}");
        let error = load(&[("MESH_DOCKER_MAX_CONCURRENT_CAP", "0")]).unwrap_err().to_string();
        assert!(error.contains("MESH_DOCKER_MAX_CONCURRENT_CAP: must be between 1 and 64 (got 0)"), "{error}");
        let error = load(&[("MESH_DOCKER_DEFAULT_MAX_CONCURRENT", "11")]).unwrap_err().to_string();
        assert!(error.contains("MESH_DOCKER_DEFAULT_MAX_CONCURRENT: must be between 1 and 10 (got 11)"), "{error}");
        let error = load(&[("MESH_DOCKER_NAMESPACE_LABEL", "team")]).unwrap_err().to_string();
        assert!(error.contains("MESH_DOCKER_NAMESPACE_LABEL: must be key=value"), "{error}");
        let error = load(&[("MESH_DOCKER_DEFAULT_STOP_TIMEOUT", "600")]).unwrap_err().to_string();
        assert!(error.contains("MESH_DOCKER_DEFAULT_STOP_TIMEOUT"), "{error}");
    }

    #[test]
    fn a_namespace_label_narrows_the_scope() {
        let config = load(&[("MESH_DOCKER_NAMESPACE_LABEL", "mesh.namespace=blue")]).unwrap();
        assert_eq!(config.scope().to_string(), "`mesh.managed=true` and `mesh.namespace=blue`");
    }
}
