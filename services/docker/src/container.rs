//! Containers as this service sees them: ids, states, summaries and the
//! spec of a container to create, with the checks a request must pass
//! before anything reaches the engine. Plain Rust, no engine or wire types.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::error::DockerError;
use crate::scope::ManagementScope;

/// Longest container id, id prefix or name accepted, in characters.
const MAX_CONTAINER_ID_CHARS: usize = 128;

/// Longest network name accepted in a spec, in characters.
const MAX_NETWORK_NAME_CHARS: usize = 128;

/// The engine's minimum memory limit (6 MiB).
pub const MIN_MEMORY_LIMIT_BYTES: u64 = 6 * 1024 * 1024;

/// Checks an id, id prefix or name as the engine spells them
/// (`[A-Za-z0-9][A-Za-z0-9_.-]*`, an optional leading `/` on names), so that
/// nothing else — a `/` or `..` in particular — reaches an engine URL path.
pub fn check_container_id(id: &str) -> Result<(), DockerError> {
    let invalid = |reason| DockerError::InvalidContainerId { id: id.to_owned(), reason };
    let bare = id.strip_prefix('/').unwrap_or(id);
    let Some(first) = bare.chars().next() else {
        return Err(invalid("it is empty"));
    };
    if bare.chars().count() > MAX_CONTAINER_ID_CHARS {
        return Err(invalid("it is longer than 128 characters"));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(invalid("it must start with a letter or digit"));
    }
    if !bare.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(invalid("it has a character other than [A-Za-z0-9_.-]"));
    }
    Ok(())
}

/// The lifecycle state of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created and never started.
    Created,
    /// Its process is running.
    Running,
    /// Its processes are frozen.
    Paused,
    /// Being restarted.
    Restarting,
    /// Being removed.
    Removing,
    /// Its process has exited.
    Exited,
    /// The engine failed to stop or remove it.
    Dead,
    /// A state this version does not know.
    Unknown,
}

impl ContainerState {
    /// Parses the engine's state word (`running`, `exited`, ...).
    #[must_use]
    pub fn from_engine(state: &str) -> Self {
        match state {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            _ => Self::Unknown,
        }
    }
}

/// One container in scope, as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSummary {
    /// The full container id.
    pub id: String,
    /// The name, without the engine's leading `/`.
    pub name: String,
    /// The image as given at creation.
    pub image: String,
    /// The lifecycle state.
    pub state: ContainerState,
    /// The engine's human-readable status, e.g. `Up 5 minutes`.
    pub status: String,
    /// Every label, the management labels included.
    pub labels: HashMap<String, String>,
    /// When it was created.
    pub created_at: Option<SystemTime>,
}

/// The transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PortProtocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A container port published on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortBinding {
    /// The port inside the container, 1 to 65535.
    pub container_port: u32,
    /// TCP or UDP.
    pub protocol: PortProtocol,
    /// The host port; 0 lets the engine choose.
    pub host_port: u32,
    /// The host address; empty means every address.
    pub host_ip: String,
}

/// When the engine restarts a container on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never (the engine's default).
    #[default]
    No,
    /// Always, also when the engine starts.
    Always,
    /// Always, unless a caller stopped it.
    UnlessStopped,
    /// On a non-zero exit, at most `max_restart_count` times (0: unlimited).
    OnFailure,
}

/// A container to create.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ContainerSpec {
    /// The name; empty lets the engine choose one.
    pub name: String,
    /// An image already on the engine.
    pub image: String,
    /// Replaces the image's command when not empty.
    pub command: Vec<String>,
    /// Environment variables.
    pub env: HashMap<String, String>,
    /// Labels besides the management labels.
    pub labels: HashMap<String, String>,
    /// Ports to publish.
    pub ports: Vec<PortBinding>,
    /// The restart policy.
    pub restart_policy: RestartPolicy,
    /// With `OnFailure`, the most restarts; 0 means unlimited.
    pub max_restart_count: u32,
    /// CPU limit in thousandths of a core; 0 means none.
    pub cpu_limit_millicores: u64,
    /// Memory limit in bytes; 0 means none.
    pub memory_limit_bytes: u64,
    /// Whether to start it once created.
    pub start: bool,
    /// The network it joins (`bridge`, `host`, `none` or a network's name);
    /// empty means the engine's default, `bridge`.
    pub network_mode: String,
}

impl ContainerSpec {
    /// The caller-visible identity of this spec in a batch: its name, or
    /// `#<index>` when it has none.
    #[must_use]
    pub fn item_id(&self, index: usize) -> String {
        if self.name.is_empty() { format!("#{index}") } else { self.name.clone() }
    }

    /// Checks every field against what the engine accepts, and that no
    /// label would override a management label.
    pub fn validate(&self, scope: &ManagementScope) -> Result<(), DockerError> {
        let invalid = |field, reason: &str| DockerError::InvalidSpec { field, reason: reason.to_owned() };
        if !self.name.is_empty() {
            check_container_id(&self.name).map_err(|error| match error {
                DockerError::InvalidContainerId { reason, .. } => invalid("specs.name", reason),
                other => other,
            })?;
        }
        if self.image.trim().is_empty() {
            return Err(invalid("specs.image", "must not be empty"));
        }
        if self.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("specs.image", "must not contain whitespace"));
        }
        for name in self.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(invalid("specs.env", "names must be non-empty and contain no `=`"));
            }
        }
        for key in self.labels.keys() {
            if key.is_empty() {
                return Err(invalid("specs.labels", "keys must not be empty"));
            }
            if scope.is_reserved_key(key) {
                return Err(DockerError::InvalidSpec {
                    field: "specs.labels",
                    reason: format!("`{key}` is a management label, set by the service"),
                });
            }
        }
        for port in &self.ports {
            if port.container_port == 0 || port.container_port > 65_535 {
                return Err(invalid("specs.ports.container_port", "must be between 1 and 65535"));
            }
            if port.host_port > 65_535 {
                return Err(invalid("specs.ports.host_port", "must be at most 65535"));
            }
            if !port.host_ip.is_empty() && port.host_ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid("specs.ports.host_ip", "must be an IP address"));
            }
        }
        if self.max_restart_count != 0 && self.restart_policy != RestartPolicy::OnFailure {
            return Err(invalid("specs.max_restart_count", "only applies to RESTART_POLICY_ON_FAILURE"));
        }
        if self.cpu_limit_millicores > 1_000_000 {
            return Err(invalid("specs.cpu_limit_millicores", "must be at most 1000000 (1000 cores)"));
        }
        if self.memory_limit_bytes != 0 && self.memory_limit_bytes < MIN_MEMORY_LIMIT_BYTES {
            return Err(invalid("specs.memory_limit_bytes", "must be 0 (no limit) or at least 6 MiB"));
        }
        if i64::try_from(self.memory_limit_bytes).is_err() {
            return Err(invalid("specs.memory_limit_bytes", "is too large"));
        }
        check_network_mode(&self.network_mode).map_err(|reason| invalid("specs.network_mode", reason))?;
        Ok(())
    }
}

/// Checks a network mode: empty, or a network name as the engine spells
/// them (`bridge`, `host` and `none` included). `container:<id>` is refused:
/// it would share the network of a container that may be outside the scope.
fn check_network_mode(network_mode: &str) -> Result<(), &'static str> {
    let Some(first) = network_mode.chars().next() else {
        return Ok(());
    };
    if network_mode.starts_with("container:") {
        return Err("joining another container's network (`container:<id>`) is not allowed");
    }
    if network_mode.chars().count() > MAX_NETWORK_NAME_CHARS {
        return Err("must be at most 128 characters");
    }
    if !first.is_ascii_alphanumeric()
        || !network_mode.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("must be bridge, host, none or a network name ([A-Za-z0-9][A-Za-z0-9_.-]*)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::LabelSelector;

    fn check_id(id: &str, valid: bool) {
        assert_eq!(check_container_id(id).is_ok(), valid, "{id:?}");
    }

    #[test]
    fn container_ids_are_checked() {
        check_id("3f2a9c", true);
        check_id("web-1", true);
        check_id("/web_1.blue", true);
        check_id(&"a".repeat(64), true);
        check_id("", false);
        check_id("/", false);
        check_id("../images/x", false);
        check_id("a/b", false);
        check_id("-flag", false);
        check_id("a b", false);
        check_id("a?all=1", false);
        check_id(&"a".repeat(129), false);
    }

    fn scope() -> ManagementScope {
        ManagementScope::new(LabelSelector::parse("mesh.managed=true").unwrap(), None)
    }

    fn field_of(spec: &ContainerSpec) -> Option<&'static str> {
        spec.validate(&scope()).err().and_then(|e| e.field())
    }

    #[test]
    fn specs_are_checked() {
        let good = ContainerSpec { name: "web".into(), image: "busybox:latest".into(), ..Default::default() };
        assert_eq!(good.validate(&scope()), Ok(()));
        assert_eq!(good.item_id(3), "web");
        assert_eq!(ContainerSpec::default().item_id(3), "#3");

        let cases: Vec<(ContainerSpec, &str)> = vec![
            (ContainerSpec { image: String::new(), ..good.clone() }, "specs.image"),
            (ContainerSpec { name: "a/b".into(), ..good.clone() }, "specs.name"),
            (ContainerSpec { env: [("A=B".into(), "c".into())].into(), ..good.clone() }, "specs.env"),
            (ContainerSpec { labels: [("mesh.managed".into(), "no".into())].into(), ..good.clone() }, "specs.labels"),
            (
                ContainerSpec {
                    ports: vec![PortBinding {
                        container_port: 0,
                        protocol: PortProtocol::Tcp,
                        host_port: 0,
                        host_ip: String::new(),
                    }],
                    ..good.clone()
                },
                "specs.ports.container_port",
            ),
            (ContainerSpec { max_restart_count: 3, ..good.clone() }, "specs.max_restart_count"),
            (ContainerSpec { memory_limit_bytes: 1024, ..good.clone() }, "specs.memory_limit_bytes"),
            (ContainerSpec { network_mode: "container:web".into(), ..good.clone() }, "specs.network_mode"),
            (ContainerSpec { network_mode: "-net".into(), ..good.clone() }, "specs.network_mode"),
            (ContainerSpec { network_mode: "a/b".into(), ..good.clone() }, "specs.network_mode"),
            (ContainerSpec { network_mode: "n".repeat(129), ..good.clone() }, "specs.network_mode"),
        ];
        for (spec, field) in cases {
            assert_eq!(field_of(&spec), Some(field), "{spec:?}");
        }
        for network_mode in ["", "bridge", "host", "none", "backend_net-1.blue"] {
            let spec = ContainerSpec { network_mode: network_mode.into(), ..good.clone() };
            assert_eq!(spec.validate(&scope()), Ok(()), "{network_mode:?}");
        }
    }
}
