//! Typed configuration: defaults, then an optional TOML file, then the
//! environment, then `validate()`; and hot reload into a `watch` channel.
//!
//! The environment is passed in as a value ([`ConfigSource`]) so tests never
//! touch the process environment; [`ConfigSource::from_process`] is the one
//! place in the workspace that reads it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where configuration comes from: an optional file and an environment map.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    /// A TOML file whose `[<section>]` table holds a service's settings.
    pub file: Option<PathBuf>,
    /// Environment variables, by name.
    pub env: BTreeMap<String, String>,
}

impl ConfigSource {
    /// Reads the process environment; `MESH_CONFIG` names the config file.
    #[must_use]
    #[allow(clippy::disallowed_methods)] // the single sanctioned read of the process environment
    pub fn from_process() -> Self {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let file = env.get("MESH_CONFIG").filter(|p| !p.is_empty()).map(PathBuf::from);
        Self { file, env }
    }

    /// Returns the value of an environment variable, if set and not empty.
    #[must_use]
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Returns a copy with `name` set, for callers that derive settings.
    #[must_use]
    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }
}

/// A service's configuration struct: defaults, a file section, an env prefix.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default + Clone + PartialEq + Send + Sync + 'static {
    /// The table of the config file that holds these settings (`cache`).
    const FILE_SECTION: &'static str;
    /// The prefix of environment variables (`MESH_CACHE_`). A field
    /// `max_memory_mb` is set by `MESH_CACHE_MAX_MEMORY_MB`.
    const ENV_PREFIX: &'static str;

    /// Reports every invalid setting; empty when the settings are usable.
    fn validate(&self) -> Vec<ConfigProblem>;
}

/// One invalid setting: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field name as in the struct (`max_memory_mb`).
    pub field: String,
    /// What is accepted, e.g. "must be between 1 and 65536 (got 0)".
    pub message: String,
}

impl ConfigProblem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// Checks `min <= value <= max`, naming the range when it is not.
    pub fn check_range<T: PartialOrd + fmt::Display + Copy>(
        problems: &mut Vec<Self>,
        field: &str,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            problems.push(Self::new(field, format!("must be between {min} and {max} (got {value})")));
        }
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, unreadable or not TOML.
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// One or more settings are invalid; each line names its variable.
    #[error("invalid configuration:\n{}", render_problems(.problems))]
    Invalid { problems: Vec<String> },
}

fn render_problems(problems: &[String]) -> String {
    problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
}

/// Loads `T`: defaults, then `[T::FILE_SECTION]` of the file, then
/// `T::ENV_PREFIX*` variables; then validates. Errors name the variable.
pub fn load<T: ServiceConfig>(source: &ConfigSource) -> Result<T, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = &source.file {
        figment = figment.merge(Serialized::defaults(file_section(path, T::FILE_SECTION)?));
    }
    let env_values = env_section(source, T::ENV_PREFIX);
    figment = figment.merge(Serialized::defaults(env_values.clone()));

    let config: T = figment.extract().map_err(|error| ConfigError::Invalid {
        problems: error
            .into_iter()
            .map(|e| {
                let mut field = e.path.join("_");
                if let figment::error::Kind::UnknownField(unknown, _) = &e.kind {
                    field.clone_from(unknown);
                }
                let origin = setting_name::<T>(&field, &env_values);
                format!("{origin}: {}", e.kind)
            })
            .collect(),
    })?;

    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            problems: problems
                .into_iter()
                .map(|p| format!("{}: {}", setting_name::<T>(&p.field, &env_values), p.message))
                .collect(),
        })
    }
}

/// The name a user would look for: the env variable when it was set there,
/// else the file key.
fn setting_name<T: ServiceConfig>(field: &str, env_values: &Dict) -> String {
    let env_name = format!("{}{}", T::ENV_PREFIX, field.to_ascii_uppercase());
    if env_values.contains_key(field) { env_name } else { format!("{env_name} ([{}] {field})", T::FILE_SECTION) }
}

fn file_section(path: &Path, section: &str) -> Result<Dict, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::File { path: path.to_owned(), message: e.to_string() })?;
    let figment = Figment::from(Toml::string(&text));
    match figment.find_value(section) {
        Ok(Value::Dict(_, dict)) => Ok(dict),
        Ok(_) => Err(ConfigError::File { path: path.to_owned(), message: format!("[{section}] must be a table") }),
        Err(e) if e.missing() => Ok(Dict::new()),
        Err(e) => Err(ConfigError::File { path: path.to_owned(), message: e.to_string() }),
    }
}

fn env_section(source: &ConfigSource, prefix: &str) -> Dict {
    source
        .env
        .iter()
        .filter_map(|(name, raw)| {
            let field = name.strip_prefix(prefix)?;
            if field.is_empty() || raw.is_empty() {
                return None;
            }
            let value: Value = raw.parse().unwrap_or_else(|never: std::convert::Infallible| match never {});
            Some((field.to_ascii_lowercase(), value))
        })
        .collect()
}

/// Serde helpers for durations written as seconds (`30`, `0.5`) or as
/// humantime strings (`30s`, `5m`), as the seed documents do.
pub mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    /// Writes whole or fractional seconds.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        if value.subsec_nanos() == 0 {
            serializer.serialize_u64(value.as_secs())
        } else {
            serializer.serialize_f64(value.as_secs_f64())
        }
    }

    /// Reads seconds as a number, or a humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Whole(u64),
            Fractional(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Whole(secs) => Ok(Duration::from_secs(secs)),
            Raw::Fractional(secs) => Duration::try_from_secs_f64(secs)
                .map_err(|_| de::Error::custom(format!("{secs} is not a non-negative number of seconds"))),
            Raw::Text(text) => {
                if let Ok(secs) = text.trim().parse::<f64>() {
                    return Duration::try_from_secs_f64(secs)
                        .map_err(|_| de::Error::custom(format!("{secs} is not a non-negative number of seconds")));
                }
                humantime::parse_duration(&text)
                    .map_err(|e| de::Error::custom(format!("`{text}` is not a duration ({e})")))
            }
        }
    }
}

/// Live configuration: the current value and a receiver that sees reloads.
pub type ConfigWatch<T> = watch::Receiver<Arc<T>>;

/// Loads `T` and keeps it current: on SIGHUP, and when the config file's
/// modification time changes (checked every `poll_interval`), `T` is loaded
/// and validated again. An invalid reload is logged and ignored, so a typo
/// never takes a running service down.
pub fn load_and_watch<T: ServiceConfig>(
    source: ConfigSource,
    poll_interval: Duration,
    shutdown: CancellationToken,
) -> Result<ConfigWatch<T>, ConfigError> {
    let initial: T = load(&source)?;
    let (sender, receiver) = watch::channel(Arc::new(initial));
    tokio::spawn(watch_for_changes(source, sender, poll_interval, shutdown));
    Ok(receiver)
}

async fn watch_for_changes<T: ServiceConfig>(
    source: ConfigSource,
    sender: watch::Sender<Arc<T>>,
    poll_interval: Duration,
    shutdown: CancellationToken,
) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(error) => {
            warn!(%error, "cannot listen for SIGHUP; reload on file change only");
            None
        }
    };
    let mut last_modified = source.file.as_deref().and_then(modified_time);
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            () = shutdown.cancelled() => return,
            () = sender.closed() => return,
            Some(()) = async { match hangups.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => "sighup",
            _ = ticker.tick() => {
                let modified = source.file.as_deref().and_then(modified_time);
                if modified == last_modified { continue; }
                last_modified = modified;
                "file changed"
            }
        };
        match load::<T>(&source) {
            Ok(config) => {
                let changed = sender.send_if_modified(|current| {
                    if **current == config {
                        false
                    } else {
                        *current = Arc::new(config);
                        true
                    }
                });
                info!(section = T::FILE_SECTION, trigger, changed, "config reloaded");
            }
            Err(error) => {
                warn!(section = T::FILE_SECTION, trigger, %error, "config reload refused; keeping the previous settings");
            }
        }
    }
}

fn modified_time(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct SampleConfig {
        max_memory_mb: u64,
        #[serde(with = "duration_secs")]
        default_ttl: Duration,
    }

    impl Default for SampleConfig {
        fn default() -> Self {
            Self { max_memory_mb: 100, default_ttl: Duration::from_secs(300) }
        }
    }

    impl ServiceConfig for SampleConfig {
        const FILE_SECTION: &'static str = "sample";
        const ENV_PREFIX: &'static str = "MESH_SAMPLE_";

        fn validate(&self) -> Vec<ConfigProblem> {
            let mut problems = Vec::new();
            ConfigProblem::check_range(&mut problems, "max_memory_mb", self.max_memory_mb, 1, 65_536);
            problems
        }
    }

    fn source(vars: &[(&str, &str)]) -> ConfigSource {
        ConfigSource { file: None, env: vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect() }
    }

    #[test]
    fn defaults_apply_without_env() {
        let config: SampleConfig = load(&source(&[])).expect("defaults are valid");
        assert_eq!(config, SampleConfig::default());
    }

    #[test]
    fn env_overrides_defaults_and_reads_seconds_or_humantime() {
        let config: SampleConfig =
            load(&source(&[("MESH_SAMPLE_MAX_MEMORY_MB", "8"), ("MESH_SAMPLE_DEFAULT_TTL", "1.5")])).unwrap();
        assert_eq!(config.max_memory_mb, 8);
        assert_eq!(config.default_ttl, Duration::from_millis(1500));
        let config: SampleConfig = load(&source(&[("MESH_SAMPLE_DEFAULT_TTL", "5m")])).unwrap();
        assert_eq!(config.default_ttl, Duration::from_secs(300));
    }

    #[test]
    fn out_of_range_names_the_variable_and_the_range() {
        let error = load::<SampleConfig>(&source(&[("MESH_SAMPLE_MAX_MEMORY_MB", "0")])).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("MESH_SAMPLE_MAX_MEMORY_MB: must be between 1 and 65536 (got 0)"), "{text}");
    }

    #[test]
    fn wrong_type_names_the_variable() {
        let error = load::<SampleConfig>(&source(&[("MESH_SAMPLE_MAX_MEMORY_MB", "lots")])).unwrap_err();
        assert!(error.to_string().contains("MESH_SAMPLE_MAX_MEMORY_MB:"), "{error}");
    }

    #[test]
    fn unknown_variable_is_refused() {
        let error = load::<SampleConfig>(&source(&[("MESH_SAMPLE_MAX_MEMORY", "8")])).unwrap_err();
        assert!(error.to_string().contains("MESH_SAMPLE_MAX_MEMORY:"), "{error}");
    }

    #[test]
    fn file_section_sits_between_defaults_and_env() {
        let dir = std::env::temp_dir().join(format!("mesh-kit-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.toml");
        std::fs::write(&path, "[sample]\nmax_memory_mb = 7\ndefault_ttl = \"10s\"\n").unwrap();
        let mut src = source(&[("MESH_SAMPLE_MAX_MEMORY_MB", "9")]);
        src.file = Some(path);
        let config: SampleConfig = load(&src).unwrap();
        assert_eq!(config.max_memory_mb, 9);
        assert_eq!(config.default_ttl, Duration::from_secs(10));
    }
}
