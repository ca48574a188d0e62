//! `DockerEngine`: the service's one client of the Docker engine, and every
//! action it takes there. Each action on a named container first inspects it
//! and checks the management scope, then acts on the full id the inspection
//! returned (so a name reused in between cannot redirect the action).
//! Engine failures become [`DockerError`]s here; no tonic or proto types.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerStatsResponse, EventMessage, HostConfig, PortBinding as EnginePortBinding,
    RestartPolicy as EngineRestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    RestartContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use futures_util::future::join_all;
use futures_util::{Stream, StreamExt};
use tokio::sync::OnceCell;
use tracing::{debug, info};

use crate::batch::run_bounded;
use crate::config::DockerConfig;
use crate::container::{
    ContainerSpec, ContainerState, ContainerSummary, PortProtocol, RestartPolicy, check_container_id,
};
use crate::error::DockerError;
use crate::scope::{LabelSelector, ManagementScope};
use crate::stats::ResourceUsage;
use crate::stats_feed::StatsFeeds;
use crate::transport;

/// Longest engine error message passed on to a caller, in bytes.
const MAX_ENGINE_MESSAGE_BYTES: usize = 512;

/// Event attributes the engine adds beside a container's labels.
const NON_LABEL_EVENT_ATTRIBUTES: [&str; 4] = ["name", "image", "exitCode", "signal"];

/// What to do to an existing container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerAction {
    /// Start it; a running container stays as it is.
    Start,
    /// Stop it, killing it after `timeout`.
    Stop {
        /// Time between SIGTERM and SIGKILL.
        timeout: Duration,
    },
    /// Stop it as above, then start it.
    Restart {
        /// Time between SIGTERM and SIGKILL.
        timeout: Duration,
    },
    /// Remove it.
    Remove {
        /// Kill it first when it runs.
        force: bool,
        /// Also remove its anonymous volumes.
        remove_volumes: bool,
    },
}

/// The outcome of one container of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionOutcome {
    /// The full id, once the container was resolved and found in scope.
    pub container_id: Option<String>,
    /// Done, or why not.
    pub result: Result<(), DockerError>,
    /// Time spent on this container, scope check included.
    pub duration: Duration,
}

/// The resource use of one container of a `GetStats` batch.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsOutcome {
    /// The full id, once the container was resolved and found in scope.
    pub container_id: Option<String>,
    /// The container's name, once resolved.
    pub name: String,
    /// The usage, or why it could not be read.
    pub result: Result<ResourceUsage, DockerError>,
}

/// One engine event about a container in scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerEvent {
    /// The full container id.
    pub container_id: String,
    /// The engine's action word, e.g. `start` or `die`.
    pub action: String,
    /// The container's name.
    pub name: String,
    /// The container's image.
    pub image: String,
    /// The container's labels.
    pub labels: HashMap<String, String>,
    /// The exit code, on `die`.
    pub exit_code: Option<i32>,
    /// When the engine recorded it.
    pub occurred_at: Option<SystemTime>,
}

/// Whether the engine answers, and what it is.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EngineHealth {
    /// Whether a ping was answered.
    pub reachable: bool,
    /// The engine version, e.g. `20.10.24`.
    pub engine_version: String,
    /// The negotiated API version, e.g. `1.41`.
    pub api_version: String,
    /// Why it is unreachable; empty when reachable.
    pub unreachable_reason: String,
    /// Round trip of the ping.
    pub ping_latency: Duration,
    /// Containers in scope, running or not.
    pub managed_container_count: u64,
}

/// A container found by id or name, and in scope.
#[derive(Clone, Debug)]
struct ResolvedContainer {
    id: String,
    name: String,
    running: bool,
}

/// The engine client: connected on first use (a down engine at startup does
/// not stop the service; calls report UNAVAILABLE until it answers), then
/// shared by every call.
#[derive(Debug)]
pub struct DockerEngine {
    /// The configured address, handed to bollard.
    host: String,
    /// The address with any user information removed, for messages and logs.
    display_host: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_stop_timeout: Duration,
    /// Set once a connection agreed on an API version; a failed attempt
    /// leaves it empty so the next call tries again.
    client: OnceCell<Docker>,
    /// Live stats streams of recently asked-about containers.
    stats_feeds: StatsFeeds,
}

impl DockerEngine {
    /// An engine client for `config.host`; nothing is connected yet.
    #[must_use]
    pub fn new(config: &DockerConfig) -> Arc<Self> {
        Arc::new(Self {
            host: config.host.clone(),
            display_host: without_user_info(&config.host),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            max_stop_timeout: config.max_stop_timeout,
            client: OnceCell::new(),
            stats_feeds: StatsFeeds::new(config.stats_feed_idle, config.max_stats_feeds),
        })
    }

    /// The engine address as shown in messages.
    #[must_use]
    pub fn display_host(&self) -> &str {
        &self.display_host
    }

    // === connection and errors ===

    async fn client(&self) -> Result<&Docker, DockerError> {
        self.client.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Docker, DockerError> {
        // bollard times out every request alike, so its timeout must cover the
        // longest stop a caller may ask for.
        let timeout_secs = (self.request_timeout + self.max_stop_timeout).as_secs().max(1);
        let unconnected = if self.host.starts_with("unix://") {
            transport::connect_unix_pooled(&self.host, timeout_secs, API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(&self.host, timeout_secs, API_DEFAULT_VERSION)
        }
        .map_err(|error| self.engine_error(error))?;
        // Older engines refuse newer API versions: agree on the highest both speak.
        let docker = tokio::time::timeout(self.connect_timeout, unconnected.negotiate_version())
            .await
            .map_err(|_| DockerError::EngineTimeout { host: self.display_host.clone(), after: self.connect_timeout })?
            .map_err(|error| self.engine_error(error))?;
        info!(host = %self.display_host, api_version = %docker.client_version(), "connected to the docker engine");
        Ok(docker)
    }

    /// Maps a failure that is not about one container.
    fn engine_error(&self, error: EngineError) -> DockerError {
        match error {
            EngineError::DockerResponseServerError { status_code, message } => {
                DockerError::EngineRefused { status_code, message: truncate(message) }
            }
            EngineError::RequestTimeoutError => {
                DockerError::EngineTimeout { host: self.display_host.clone(), after: self.request_timeout }
            }
            EngineError::SocketNotFoundError(path) => DockerError::EngineUnavailable {
                host: self.display_host.clone(),
                cause: format!("no socket at {path}"),
            },
            EngineError::HyperResponseError { .. }
            | EngineError::HyperLegacyError { .. }
            | EngineError::IOError { .. }
            | EngineError::HttpClientError { .. } => {
                DockerError::EngineUnavailable { host: self.display_host.clone(), cause: error_chain(&error) }
            }
            other => DockerError::Internal { reason: error_chain(&other) },
        }
    }

    /// Maps a failure of a call about container `id`: 404 means no such
    /// container, or, when starting it, no such network.
    fn container_error(&self, error: EngineError, id: &str) -> DockerError {
        match error {
            EngineError::DockerResponseServerError { status_code: 404, message } => match missing_network(&message) {
                Some(network) => DockerError::NetworkNotFound { network: network.to_owned() },
                None => DockerError::ContainerNotFound { id: id.to_owned() },
            },
            other => self.engine_error(other),
        }
    }

    // === scope ===

    /// Finds container `id` (an id, id prefix or name) and checks it is in scope.
    async fn resolve_in_scope(
        &self,
        docker: &Docker,
        id: &str,
        scope: &ManagementScope,
    ) -> Result<ResolvedContainer, DockerError> {
        check_container_id(id)?;
        // Names may be given as the engine prints them, with a leading `/`,
        // which must not reach the URL path.
        let lookup = strip_slash(id);
        let inspected = docker.inspect_container(lookup, None).await.map_err(|e| self.container_error(e, id))?;
        let labels = inspected.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        if !scope.admits(&labels) {
            return Err(DockerError::NotManaged { id: id.to_owned(), required: scope.to_string() });
        }
        let full_id = inspected
            .id
            .ok_or_else(|| DockerError::Internal { reason: format!("the engine's inspection of `{id}` has no id") })?;
        Ok(ResolvedContainer {
            id: full_id,
            name: inspected.name.as_deref().map(strip_slash).unwrap_or_default().to_owned(),
            running: inspected.state.as_ref().and_then(|s| s.running).unwrap_or(false),
        })
    }

    // === batch actions ===

    /// Applies `action` to every container, at most `max_concurrent` at a
    /// time. Fails as a whole only when the engine cannot be reached at all.
    pub async fn act_on_batch(
        &self,
        ids: Vec<String>,
        action: ContainerAction,
        scope: &ManagementScope,
        max_concurrent: u32,
    ) -> Result<Vec<ActionOutcome>, DockerError> {
        let docker = self.client().await?;
        Ok(run_bounded(ids, max_concurrent, |id| self.act(docker, id, action, scope)).await)
    }

    async fn act(
        &self,
        docker: &Docker,
        id: String,
        action: ContainerAction,
        scope: &ManagementScope,
    ) -> ActionOutcome {
        let started = Instant::now();
        let resolved = match self.resolve_in_scope(docker, &id, scope).await {
            Ok(resolved) => resolved,
            Err(error) => return ActionOutcome { container_id: None, result: Err(error), duration: started.elapsed() },
        };
        let full_id = resolved.id.as_str();
        let result = match action {
            ContainerAction::Start => docker.start_container(full_id, None).await,
            ContainerAction::Stop { timeout } => {
                let options = StopContainerOptionsBuilder::new().t(whole_seconds(timeout)).build();
                docker.stop_container(full_id, Some(options)).await
            }
            ContainerAction::Restart { timeout } => {
                let options = RestartContainerOptionsBuilder::new().t(whole_seconds(timeout)).build();
                docker.restart_container(full_id, Some(options)).await
            }
            ContainerAction::Remove { force, remove_volumes } => {
                let options = RemoveContainerOptionsBuilder::new().force(force).v(remove_volumes).build();
                docker.remove_container(full_id, Some(options)).await
            }
        }
        .map_err(|error| self.container_error(error, &id));
        debug!(container_id = full_id, ?action, ok = result.is_ok(), "container action done");
        ActionOutcome { container_id: Some(resolved.id), result, duration: started.elapsed() }
    }

    /// Creates a container per spec (and starts it when asked), at most
    /// `max_concurrent` at a time. Fails as a whole only when the engine
    /// cannot be reached at all.
    pub async fn create_batch(
        &self,
        specs: Vec<ContainerSpec>,
        scope: &ManagementScope,
        max_concurrent: u32,
    ) -> Result<Vec<ActionOutcome>, DockerError> {
        let docker = self.client().await?;
        Ok(run_bounded(specs, max_concurrent, |spec| self.create(docker, spec, scope)).await)
    }

    async fn create(&self, docker: &Docker, spec: ContainerSpec, scope: &ManagementScope) -> ActionOutcome {
        let started = Instant::now();
        if let Err(error) = spec.validate(scope) {
            return ActionOutcome { container_id: None, result: Err(error), duration: started.elapsed() };
        }
        let mut options = CreateContainerOptionsBuilder::new();
        if !spec.name.is_empty() {
            options = options.name(&spec.name);
        }
        let created = docker.create_container(Some(options.build()), container_body(&spec, scope)).await;
        let container_id = match created {
            Ok(created) => created.id,
            Err(error) => {
                let error = match error {
                    EngineError::DockerResponseServerError { status_code: 404, .. } => {
                        DockerError::ImageNotFound { image: spec.image.clone() }
                    }
                    EngineError::DockerResponseServerError { status_code: 409, .. } => {
                        DockerError::NameTaken { name: spec.name.clone() }
                    }
                    other => self.engine_error(other),
                };
                return ActionOutcome { container_id: None, result: Err(error), duration: started.elapsed() };
            }
        };
        let result = if spec.start {
            docker.start_container(&container_id, None).await.map_err(|e| self.container_error(e, &container_id))
        } else {
            Ok(())
        };
        debug!(container_id, started = spec.start, ok = result.is_ok(), "container created");
        ActionOutcome { container_id: Some(container_id), result, duration: started.elapsed() }
    }

    // === stats ===

    /// Reads the resource use of every container. Each is resolved and
    /// scope-checked first, at most `max_concurrent` at a time. A running
    /// container then answers from its live feed (see `stats_feed`); the
    /// others, and every container when feeds are off or full, are sampled
    /// one-shot: one sample each, then, when `cpu_sample_window` is not
    /// zero, a second sample of the running ones after one shared wait.
    pub async fn stats_batch(
        &self,
        ids: Vec<String>,
        cpu_sample_window: Duration,
        scope: &ManagementScope,
        max_concurrent: u32,
    ) -> Result<Vec<StatsOutcome>, DockerError> {
        let docker = self.client().await?;
        let resolved: Vec<Result<ResolvedContainer, DockerError>> =
            run_bounded(ids, max_concurrent, |id| async move { self.resolve_in_scope(docker, &id, scope).await }).await;

        // Waiting on a feed costs the engine nothing, so every container waits at once.
        let need_cpu = !cpu_sample_window.is_zero();
        let from_feeds: Vec<Option<ResourceUsage>> = join_all(resolved.iter().map(|container| async move {
            match container {
                Ok(container) if container.running => {
                    self.stats_feeds.usage(docker, &container.id, need_cpu, self.request_timeout).await
                }
                _ => None,
            }
        }))
        .await;

        let unanswered: Vec<(usize, ResolvedContainer)> = resolved
            .iter()
            .zip(&from_feeds)
            .enumerate()
            .filter_map(|(index, pair)| match pair {
                (Ok(container), None) => Some((index, container.clone())),
                _ => None,
            })
            .collect();
        let mut sampled = self.sample_one_shot(docker, unanswered, cpu_sample_window, max_concurrent).await;

        let outcomes = resolved
            .into_iter()
            .zip(from_feeds)
            .enumerate()
            .map(|(index, (container, from_feed))| match container {
                Err(error) => StatsOutcome { container_id: None, name: String::new(), result: Err(error) },
                Ok(container) => {
                    let result = match from_feed {
                        Some(usage) => Ok(usage),
                        None => sampled.remove(&index).unwrap_or_else(|| {
                            Err(DockerError::Internal { reason: format!("no stats taken for `{}`", container.id) })
                        }),
                    };
                    StatsOutcome { container_id: Some(container.id), name: container.name, result }
                }
            })
            .collect();
        Ok(outcomes)
    }

    /// One-shot usage of `containers` (keyed by their index in the batch).
    async fn sample_one_shot(
        &self,
        docker: &Docker,
        containers: Vec<(usize, ResolvedContainer)>,
        cpu_sample_window: Duration,
        max_concurrent: u32,
    ) -> HashMap<usize, Result<ResourceUsage, DockerError>> {
        let first_samples = run_bounded(containers, max_concurrent, |(index, container)| async move {
            let sample = self.sample(docker, &container.id).await;
            (index, container, sample)
        })
        .await;

        let needs_second_sample: Vec<(usize, String)> = if cpu_sample_window.is_zero() {
            Vec::new()
        } else {
            first_samples
                .iter()
                .filter(|(_, container, sample)| container.running && sample.is_ok())
                .map(|(index, container, _)| (*index, container.id.clone()))
                .collect()
        };
        let mut second_samples: HashMap<usize, Result<ContainerStatsResponse, DockerError>> = HashMap::new();
        if !needs_second_sample.is_empty() {
            tokio::time::sleep(cpu_sample_window).await;
            let samples = run_bounded(needs_second_sample, max_concurrent, |(index, full_id)| async move {
                (index, self.sample(docker, &full_id).await)
            })
            .await;
            second_samples.extend(samples);
        }

        first_samples
            .into_iter()
            .map(|(index, _, first)| {
                let usage = first.and_then(|first| match second_samples.remove(&index) {
                    Some(Ok(second)) => Ok(ResourceUsage::from_samples(Some(&first), &second)),
                    Some(Err(error)) => Err(error),
                    None => Ok(ResourceUsage::from_samples(None, &first)),
                });
                (index, usage)
            })
            .collect()
    }

    /// One sample, without the engine's own wait for a second one.
    async fn sample(&self, docker: &Docker, full_id: &str) -> Result<ContainerStatsResponse, DockerError> {
        let options = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
        let samples = docker.stats(full_id, Some(options));
        let mut samples = std::pin::pin!(samples);
        match samples.next().await {
            Some(Ok(sample)) => Ok(sample),
            Some(Err(error)) => Err(self.container_error(error, full_id)),
            None => Err(DockerError::Internal { reason: format!("the engine sent no stats for `{full_id}`") }),
        }
    }

    // === listing, events, health ===

    /// The containers in scope matching every selector, ordered by id.
    pub async fn list(
        &self,
        scope: &ManagementScope,
        selectors: &[LabelSelector],
        include_stopped: bool,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let docker = self.client().await?;
        let filters = HashMap::from([("label", scope.engine_label_filters(selectors))]);
        let options = ListContainersOptionsBuilder::new().all(include_stopped).filters(&filters).build();
        let listed = docker.list_containers(Some(options)).await.map_err(|e| self.engine_error(e))?;
        let mut containers: Vec<ContainerSummary> = listed
            .into_iter()
            .filter_map(|summary| {
                let labels = summary.labels.unwrap_or_default();
                // The engine filtered already; this keeps the scope a local fact too.
                if !scope.admits(&labels) || !selectors.iter().all(|s| s.matches(&labels)) {
                    return None;
                }
                Some(ContainerSummary {
                    id: summary.id?,
                    name: summary
                        .names
                        .unwrap_or_default()
                        .first()
                        .map(|n| strip_slash(n).to_owned())
                        .unwrap_or_default(),
                    image: summary.image.unwrap_or_default(),
                    state: ContainerState::from_engine(&summary.state.map(|s| s.to_string()).unwrap_or_default()),
                    status: summary.status.unwrap_or_default(),
                    labels,
                    created_at: summary
                        .created
                        .and_then(|secs| u64::try_from(secs).ok())
                        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs)),
                })
            })
            .collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(containers)
    }

    /// The engine's events about containers in scope matching every
    /// selector, and, when `actions` is not empty, only those actions.
    pub async fn events(
        &self,
        scope: &ManagementScope,
        selectors: &[LabelSelector],
        actions: &[String],
    ) -> Result<impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + 'static, DockerError> {
        let docker = self.client().await?;
        let mut filters =
            HashMap::from([("type", vec!["container".to_owned()]), ("label", scope.engine_label_filters(selectors))]);
        if !actions.is_empty() {
            filters.insert("event", actions.to_vec());
        }
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        let scope = scope.clone();
        let display_host = self.display_host.clone();
        let request_timeout = self.request_timeout;
        let events = docker.events(Some(options)).filter_map(move |event| {
            let mapped = match event {
                Ok(message) => container_event(message).filter(|event| scope.admits(&event.labels)).map(Ok),
                // Any failure of a long-lived stream means the engine went away.
                Err(error) => Some(Err(match error {
                    EngineError::RequestTimeoutError => {
                        DockerError::EngineTimeout { host: display_host.clone(), after: request_timeout }
                    }
                    other => DockerError::EngineUnavailable { host: display_host.clone(), cause: error_chain(&other) },
                })),
            };
            std::future::ready(mapped)
        });
        Ok(events)
    }

    /// Pings the engine and reads its version; never fails.
    pub async fn health(&self, scope: &ManagementScope) -> EngineHealth {
        let docker = match self.client().await {
            Ok(docker) => docker,
            Err(error) => return EngineHealth { unreachable_reason: error.to_string(), ..EngineHealth::default() },
        };
        let ping_started = Instant::now();
        if let Err(error) = docker.ping().await {
            return EngineHealth {
                unreachable_reason: self.engine_error(error).to_string(),
                ping_latency: ping_started.elapsed(),
                ..EngineHealth::default()
            };
        }
        let ping_latency = ping_started.elapsed();
        let engine_version = docker.version().await.ok().and_then(|v| v.version).unwrap_or_default();
        let managed_container_count = self.list(scope, &[], true).await.map_or(0, |list| list.len() as u64);
        EngineHealth {
            reachable: true,
            engine_version,
            api_version: docker.client_version().to_string(),
            unreachable_reason: String::new(),
            ping_latency,
            managed_container_count,
        }
    }
}

/// The engine's create body for `spec`, with the scope's labels added.
fn container_body(spec: &ContainerSpec, scope: &ManagementScope) -> ContainerCreateBody {
    let mut labels = spec.labels.clone();
    labels.extend(scope.labels_for_new_container());
    let mut env: Vec<String> = spec.env.iter().map(|(name, value)| format!("{name}={value}")).collect();
    env.sort();
    let mut port_bindings: HashMap<String, Option<Vec<EnginePortBinding>>> = HashMap::new();
    for port in &spec.ports {
        let protocol = match port.protocol {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        };
        let binding = EnginePortBinding {
            host_ip: (!port.host_ip.is_empty()).then(|| port.host_ip.clone()),
            host_port: Some(if port.host_port == 0 { String::new() } else { port.host_port.to_string() }),
        };
        port_bindings
            .entry(format!("{}/{protocol}", port.container_port))
            .or_default()
            .get_or_insert_default()
            .push(binding);
    }
    let restart_policy = match spec.restart_policy {
        RestartPolicy::No => RestartPolicyNameEnum::NO,
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
    };
    let host_config = HostConfig {
        port_bindings: (!port_bindings.is_empty()).then(|| port_bindings.clone()),
        restart_policy: Some(EngineRestartPolicy {
            name: Some(restart_policy),
            maximum_retry_count: (spec.restart_policy == RestartPolicy::OnFailure)
                .then_some(i64::from(spec.max_restart_count)),
        }),
        // Both bounds are validated: millicores ≤ 10^6, bytes ≤ i64::MAX.
        nano_cpus: (spec.cpu_limit_millicores > 0)
            .then(|| i64::try_from(spec.cpu_limit_millicores * 1_000_000).unwrap_or(i64::MAX)),
        memory: (spec.memory_limit_bytes > 0).then(|| i64::try_from(spec.memory_limit_bytes).unwrap_or(i64::MAX)),
        // Unset leaves the choice to the engine, which picks its bridge.
        network_mode: (!spec.network_mode.is_empty()).then(|| spec.network_mode.clone()),
        ..HostConfig::default()
    };
    let mut exposed_ports: Vec<String> = port_bindings.into_keys().collect();
    exposed_ports.sort();
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: (!env.is_empty()).then_some(env),
        labels: Some(labels),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    }
}

/// A container event from an engine event message; `None` when it is not
/// about a container.
fn container_event(message: EventMessage) -> Option<ContainerEvent> {
    let actor = message.actor?;
    let mut attributes = actor.attributes.unwrap_or_default();
    let name = attributes.get("name").cloned().unwrap_or_default();
    let image = attributes.get("image").cloned().unwrap_or_default();
    let exit_code = attributes.get("exitCode").and_then(|code| code.parse().ok());
    for key in NON_LABEL_EVENT_ATTRIBUTES {
        attributes.remove(key);
    }
    let occurred_at = match (message.time_nano, message.time) {
        (Some(nanos), _) => u64::try_from(nanos).ok().map(|n| UNIX_EPOCH + Duration::from_nanos(n)),
        (None, Some(secs)) => u64::try_from(secs).ok().map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        (None, None) => None,
    };
    Some(ContainerEvent {
        container_id: actor.id?,
        action: message.action.unwrap_or_default(),
        name,
        image,
        labels: attributes,
        exit_code,
        occurred_at,
    })
}

/// The network named by the engine's "network <name> not found", the 404
/// it answers when a container's network is gone at start.
fn missing_network(message: &str) -> Option<&str> {
    message.strip_prefix("network ")?.strip_suffix(" not found")
}

/// Whole seconds, rounded up, as the engine's `t` parameter takes them.
fn whole_seconds(timeout: Duration) -> i32 {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn strip_slash(name: &str) -> &str {
    name.strip_prefix('/').unwrap_or(name)
}

/// `tcp://user:secret@host:2375` → `tcp://host:2375`.
fn without_user_info(host: &str) -> String {
    let Some((scheme, rest)) = host.split_once("://") else {
        return host.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{authority}{path}")
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_ENGINE_MESSAGE_BYTES {
        let mut end = MAX_ENGINE_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use bollard::models::EventActor;

    use super::*;
    use crate::container::PortBinding;

    #[test]
    fn user_info_is_removed_from_hosts() {
        assert_eq!(without_user_info("unix:///var/run/docker.sock"), "unix:///var/run/docker.sock");
        assert_eq!(without_user_info("tcp://10.0.0.1:2375"), "tcp://10.0.0.1:2375");
        assert_eq!(without_user_info("tcp://me:s3cret@10.0.0.1:2375"), "tcp://10.0.0.1:2375");
        assert_eq!(without_user_info("http://me:s3cret@box:2375/v1"), "http://box:2375/v1");
    }

    #[test]
    fn a_missing_network_is_told_from_a_missing_container() {
        assert_eq!(missing_network("network backend not found"), Some("backend"));
        assert_eq!(missing_network("No such container: 3f2a"), None);
    }

    #[test]
    fn stop_timeouts_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
    }

    #[test]
    fn long_engine_messages_are_cut_on_a_char_boundary() {
        let message = truncate("é".repeat(400));
        assert!(message.len() <= MAX_ENGINE_MESSAGE_BYTES + '…'.len_utf8());
        assert!(message.ends_with('…'));
    }

    #[test]
    fn create_bodies_carry_the_scope_labels_and_limits() {
        let scope = ManagementScope::new(LabelSelector::parse("mesh.managed=true").unwrap(), None);
        let spec = ContainerSpec {
            image: "busybox".into(),
            env: [("B".into(), "2".into()), ("A".into(), "1".into())].into(),
            labels: [("app".into(), "web".into())].into(),
            ports: vec![PortBinding {
                container_port: 80,
                protocol: PortProtocol::Tcp,
                host_port: 0,
                host_ip: String::new(),
            }],
            restart_policy: RestartPolicy::OnFailure,
            max_restart_count: 3,
            cpu_limit_millicores: 1500,
            memory_limit_bytes: 64 << 20,
            ..Default::default()
        };
        let body = container_body(&spec, &scope);
        let labels = body.labels.unwrap();
        assert_eq!(labels["mesh.managed"], "true");
        assert_eq!(labels["app"], "web");
        assert_eq!(body.env.unwrap(), ["A=1", "B=2"]);
        assert_eq!(body.exposed_ports.unwrap(), ["80/tcp"]);
        let host = body.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.restart_policy.unwrap().maximum_retry_count, Some(3));
        assert!(host.port_bindings.unwrap().contains_key("80/tcp"));
        assert_eq!(host.network_mode, None, "an unset network mode is the engine's choice");
        let isolated = ContainerSpec { network_mode: "none".into(), ..spec };
        assert_eq!(container_body(&isolated, &scope).host_config.unwrap().network_mode.as_deref(), Some("none"));
    }

    #[test]
    fn events_split_labels_from_engine_attributes() {
        let message = EventMessage {
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([
                    ("name".to_owned(), "web".to_owned()),
                    ("image".to_owned(), "busybox".to_owned()),
                    ("exitCode".to_owned(), "137".to_owned()),
                    ("mesh.managed".to_owned(), "true".to_owned()),
                ])),
            }),
            time_nano: Some(1_000_000_001),
            ..Default::default()
        };
        let event = container_event(message).expect("a container event");
        assert_eq!((event.name.as_str(), event.image.as_str(), event.exit_code), ("web", "busybox", Some(137)));
        assert_eq!(event.labels, HashMap::from([("mesh.managed".to_owned(), "true".to_owned())]));
        assert_eq!(event.occurred_at, Some(UNIX_EPOCH + Duration::from_nanos(1_000_000_001)));
    }
}
