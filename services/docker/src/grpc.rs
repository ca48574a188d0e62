//! `DockerOpsGrpc`: `mesh.docker.v1.DockerOps` over the engine. It checks
//! requests against the live settings, converts wire types to domain values,
//! calls [`DockerEngine`] and converts back; the only file of this crate that
//! knows tonic or the proto.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use mesh_kit::error::{RpcError, ok_status_proto, to_status, to_status_proto};
use mesh_kit::{CancellationToken, ConfigWatch, correlation};
use mesh_proto::common::v1::ItemResult;
use mesh_proto::docker::v1 as pb;
use mesh_proto::docker::v1::docker_ops_server::DockerOps;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, instrument};

use crate::MAX_CPU_SAMPLE_WINDOW;
use crate::batch::effective_concurrency;
use crate::config::DockerConfig;
use crate::container::{ContainerSpec, ContainerState, ContainerSummary, PortBinding, PortProtocol, RestartPolicy};
use crate::engine::{ActionOutcome, ContainerAction, ContainerEvent, DockerEngine, StatsOutcome};
use crate::error::DockerError;
use crate::scope::LabelSelector;

/// Containers per `ListContainers` page when the request says 0.
const DEFAULT_PAGE_SIZE: i32 = 100;
/// The most containers per `ListContainers` page.
const MAX_PAGE_SIZE: i32 = 1000;
/// Events buffered per `WatchEvents` caller before the engine stream waits.
const EVENT_BUFFER: usize = 64;

impl RpcError for DockerError {
    fn code(&self) -> Code {
        match self {
            Self::InvalidContainerId { .. }
            | Self::EmptyBatch { .. }
            | Self::BatchTooLarge { .. }
            | Self::InvalidStopTimeout { .. }
            | Self::InvalidCpuSampleWindow { .. }
            | Self::InvalidLabelSelector { .. }
            | Self::InvalidPageSize { .. }
            | Self::InvalidPageToken
            | Self::InvalidSpec { .. } => Code::InvalidArgument,
            Self::ContainerNotFound { .. } | Self::ImageNotFound { .. } | Self::NetworkNotFound { .. } => {
                Code::NotFound
            }
            Self::NotManaged { .. } => Code::PermissionDenied,
            Self::NameTaken { .. } => Code::AlreadyExists,
            Self::EngineRefused { .. } => Code::FailedPrecondition,
            Self::EngineUnavailable { .. } | Self::EngineTimeout { .. } => Code::Unavailable,
            Self::Internal { .. } => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        DockerError::reason(self)
    }

    fn domain(&self) -> &'static str {
        "mesh.docker.v1"
    }

    fn field(&self) -> Option<&'static str> {
        DockerError::field(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        self.is_engine_unreachable().then_some(Duration::from_secs(1))
    }
}

/// The gRPC face of the `DockerOps` service: the engine, the live settings,
/// and the process shutdown that ends event streams.
#[derive(Debug, Clone)]
pub struct DockerOpsGrpc {
    engine: Arc<DockerEngine>,
    config: ConfigWatch<DockerConfig>,
    shutdown: CancellationToken,
}

impl DockerOpsGrpc {
    /// Serves `engine` with the settings in `config`; `shutdown` ends
    /// `WatchEvents` streams so draining never waits on them.
    #[must_use]
    pub fn new(engine: Arc<DockerEngine>, config: ConfigWatch<DockerConfig>, shutdown: CancellationToken) -> Self {
        Self { engine, config, shutdown }
    }

    fn settings(&self) -> Arc<DockerConfig> {
        self.config.borrow().clone()
    }

    /// Runs a start, stop, restart or remove batch and shapes its results.
    async fn act(
        &self,
        ids: Vec<String>,
        requested_concurrency: u32,
        action: ContainerAction,
        config: &DockerConfig,
    ) -> Result<(Vec<pb::ContainerResult>, u32), Status> {
        check_batch_size(ids.len(), "container_ids", config).map_err(|e| status(&e))?;
        let concurrency = concurrency(requested_concurrency, config);
        let outcomes = self
            .engine
            .act_on_batch(ids.clone(), action, &config.scope(), concurrency)
            .await
            .map_err(|e| status(&e))?;
        let results = ids.into_iter().zip(outcomes).map(|(id, outcome)| container_result(id, outcome)).collect();
        Ok((results, concurrency))
    }
}

fn status(error: &DockerError) -> Status {
    to_status(error)
}

fn item(item_id: String, result: Result<(), &DockerError>) -> ItemResult {
    let status = match result {
        Ok(()) => ok_status_proto(),
        Err(error) => to_status_proto(error),
    };
    ItemResult { item_id, status: Some(status) }
}

fn container_result(item_id: String, outcome: ActionOutcome) -> pb::ContainerResult {
    pb::ContainerResult {
        result: Some(item(item_id, outcome.result.as_ref().copied())),
        container_id: outcome.container_id.unwrap_or_default(),
        duration: prost_types::Duration::try_from(outcome.duration).ok(),
    }
}

fn concurrency(requested: u32, config: &DockerConfig) -> u32 {
    effective_concurrency(requested, config.default_max_concurrent, config.max_concurrent_cap)
}

fn check_batch_size(count: usize, field: &'static str, config: &DockerConfig) -> Result<(), DockerError> {
    if count == 0 {
        return Err(DockerError::EmptyBatch { field });
    }
    if count > config.max_batch_size {
        return Err(DockerError::BatchTooLarge { field, count, max: config.max_batch_size });
    }
    Ok(())
}

/// The stop timeout of a request; unset means the default.
fn stop_timeout_from_wire(wire: Option<prost_types::Duration>, config: &DockerConfig) -> Result<Duration, DockerError> {
    let Some(wire) = wire else {
        return Ok(config.default_stop_timeout);
    };
    let timeout = Duration::try_from(wire)
        .map_err(|_| DockerError::InvalidStopTimeout { reason: "must not be negative".to_owned() })?;
    if timeout > config.max_stop_timeout {
        return Err(DockerError::InvalidStopTimeout {
            reason: format!("{timeout:?} exceeds the maximum of {:?}", config.max_stop_timeout),
        });
    }
    Ok(timeout)
}

/// The CPU sample window of a request; unset means the default.
fn cpu_sample_window_from_wire(
    wire: Option<prost_types::Duration>,
    config: &DockerConfig,
) -> Result<Duration, DockerError> {
    let Some(wire) = wire else {
        return Ok(config.default_cpu_sample_window);
    };
    let window = Duration::try_from(wire)
        .map_err(|_| DockerError::InvalidCpuSampleWindow { reason: "must not be negative".to_owned() })?;
    if window > MAX_CPU_SAMPLE_WINDOW {
        return Err(DockerError::InvalidCpuSampleWindow {
            reason: format!("{window:?} exceeds the maximum of {MAX_CPU_SAMPLE_WINDOW:?}"),
        });
    }
    Ok(window)
}

fn selectors_from_wire(selectors: &[String]) -> Result<Vec<LabelSelector>, DockerError> {
    selectors.iter().map(|selector| LabelSelector::parse(selector)).collect()
}

/// The page size of a request; 0 means the default.
fn page_size_from_wire(page_size: i32) -> Result<usize, DockerError> {
    match page_size {
        0 => Ok(DEFAULT_PAGE_SIZE.unsigned_abs() as usize),
        1..=MAX_PAGE_SIZE => Ok(page_size.unsigned_abs() as usize),
        _ => Err(DockerError::InvalidPageSize { page_size, max: MAX_PAGE_SIZE }),
    }
}

/// A page token is the full id of the previous page's last container.
fn page_token_from_wire(token: &str) -> Result<Option<&str>, DockerError> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Some(token))
    } else {
        Err(DockerError::InvalidPageToken)
    }
}

fn timestamp(time: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    time.map(prost_types::Timestamp::from)
}

fn state_to_wire(state: ContainerState) -> pb::ContainerState {
    match state {
        ContainerState::Created => pb::ContainerState::Created,
        ContainerState::Running => pb::ContainerState::Running,
        ContainerState::Paused => pb::ContainerState::Paused,
        ContainerState::Restarting => pb::ContainerState::Restarting,
        ContainerState::Removing => pb::ContainerState::Removing,
        ContainerState::Exited => pb::ContainerState::Exited,
        ContainerState::Dead => pb::ContainerState::Dead,
        ContainerState::Unknown => pb::ContainerState::Unspecified,
    }
}

fn container_to_wire(container: ContainerSummary) -> pb::Container {
    pb::Container {
        container_id: container.id,
        name: container.name,
        image: container.image,
        state: state_to_wire(container.state).into(),
        status: container.status,
        labels: container.labels.into_iter().collect(),
        create_time: timestamp(container.created_at),
    }
}

fn spec_from_wire(spec: pb::ContainerSpec) -> ContainerSpec {
    let restart_policy = match spec.restart_policy() {
        pb::RestartPolicy::Unspecified | pb::RestartPolicy::No => RestartPolicy::No,
        pb::RestartPolicy::Always => RestartPolicy::Always,
        pb::RestartPolicy::UnlessStopped => RestartPolicy::UnlessStopped,
        pb::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
    };
    ContainerSpec {
        ports: spec
            .ports
            .iter()
            .map(|port| PortBinding {
                container_port: port.container_port,
                protocol: match port.protocol() {
                    pb::PortProtocol::Unspecified | pb::PortProtocol::Tcp => PortProtocol::Tcp,
                    pb::PortProtocol::Udp => PortProtocol::Udp,
                },
                host_port: port.host_port,
                host_ip: port.host_ip.clone(),
            })
            .collect(),
        name: spec.name,
        image: spec.image,
        command: spec.command,
        env: spec.env.into_iter().collect(),
        labels: spec.labels.into_iter().collect(),
        restart_policy,
        max_restart_count: spec.max_restart_count,
        cpu_limit_millicores: spec.cpu_limit_millicores,
        memory_limit_bytes: spec.memory_limit_bytes,
        start: spec.start,
        network_mode: spec.network_mode,
    }
}

fn stats_to_wire(item_id: String, outcome: StatsOutcome) -> pb::ContainerStats {
    let mut wire = pb::ContainerStats {
        result: Some(item(item_id, outcome.result.as_ref().map(|_| ()))),
        container_id: outcome.container_id.unwrap_or_default(),
        name: outcome.name,
        ..Default::default()
    };
    if let Ok(usage) = outcome.result {
        wire.cpu_percent = usage.cpu_percent;
        wire.online_cpus = usage.online_cpus;
        wire.memory_usage_bytes = usage.memory_usage_bytes;
        wire.memory_limit_bytes = usage.memory_limit_bytes;
        wire.network_rx_bytes = usage.network_rx_bytes;
        wire.network_tx_bytes = usage.network_tx_bytes;
        wire.block_read_bytes = usage.block_read_bytes;
        wire.block_write_bytes = usage.block_write_bytes;
        wire.pids = usage.pids;
        wire.read_time = timestamp(usage.read_at);
    }
    wire
}

fn event_to_wire(event: ContainerEvent) -> pb::WatchEventsResponse {
    pb::WatchEventsResponse {
        container_id: event.container_id,
        action: event.action,
        name: event.name,
        image: event.image,
        labels: event.labels.into_iter().collect(),
        exit_code: event.exit_code,
        event_time: timestamp(event.occurred_at),
    }
}

/// The stream type of `WatchEvents`.
pub type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DockerOps for DockerOpsGrpc {
    type WatchEventsStream = WatchEventsStream;

    #[instrument(skip_all)]
    async fn list_containers(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        let selectors = selectors_from_wire(&request.label_selectors).map_err(|e| status(&e))?;
        let page_size = page_size_from_wire(request.page_size).map_err(|e| status(&e))?;
        let after_id = page_token_from_wire(&request.page_token).map_err(|e| status(&e))?;
        let containers =
            self.engine.list(&config.scope(), &selectors, request.include_stopped).await.map_err(|e| status(&e))?;
        let remaining: Vec<ContainerSummary> =
            containers.into_iter().filter(|c| after_id.is_none_or(|after| c.id.as_str() > after)).collect();
        let next_page_token =
            if remaining.len() > page_size { remaining[page_size - 1].id.clone() } else { String::new() };
        Ok(Response::new(pb::ListContainersResponse {
            containers: remaining.into_iter().take(page_size).map(container_to_wire).collect(),
            next_page_token,
        }))
    }

    #[instrument(skip_all, fields(container_count = request.get_ref().container_ids.len()))]
    async fn start_containers(
        &self,
        request: Request<pb::StartContainersRequest>,
    ) -> Result<Response<pb::StartContainersResponse>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        let (results, max_concurrent) =
            self.act(request.container_ids, request.max_concurrent, ContainerAction::Start, &config).await?;
        Ok(Response::new(pb::StartContainersResponse { results, max_concurrent }))
    }

    #[instrument(skip_all, fields(container_count = request.get_ref().container_ids.len()))]
    async fn stop_containers(
        &self,
        request: Request<pb::StopContainersRequest>,
    ) -> Result<Response<pb::StopContainersResponse>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        let timeout = stop_timeout_from_wire(request.stop_timeout, &config).map_err(|e| status(&e))?;
        let (results, max_concurrent) =
            self.act(request.container_ids, request.max_concurrent, ContainerAction::Stop { timeout }, &config).await?;
        Ok(Response::new(pb::StopContainersResponse { results, max_concurrent }))
    }

    #[instrument(skip_all, fields(container_count = request.get_ref().container_ids.len()))]
    async fn restart_containers(
        &self,
        request: Request<pb::RestartContainersRequest>,
    ) -> Result<Response<pb::RestartContainersResponse>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        let timeout = stop_timeout_from_wire(request.stop_timeout, &config).map_err(|e| status(&e))?;
        let action = ContainerAction::Restart { timeout };
        let (results, max_concurrent) =
            self.act(request.container_ids, request.max_concurrent, action, &config).await?;
        Ok(Response::new(pb::RestartContainersResponse { results, max_concurrent }))
    }

    #[instrument(skip_all, fields(container_count = request.get_ref().container_ids.len()))]
    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::GetStatsResponse>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        check_batch_size(request.container_ids.len(), "container_ids", &config).map_err(|e| status(&e))?;
        let window = cpu_sample_window_from_wire(request.cpu_sample_window, &config).map_err(|e| status(&e))?;
        let max_concurrent = concurrency(request.max_concurrent, &config);
        let outcomes = self
            .engine
            .stats_batch(request.container_ids.clone(), window, &config.scope(), max_concurrent)
            .await
            .map_err(|e| status(&e))?;
        let stats =
            request.container_ids.into_iter().zip(outcomes).map(|(id, outcome)| stats_to_wire(id, outcome)).collect();
        Ok(Response::new(pb::GetStatsResponse { stats, max_concurrent }))
    }

    #[instrument(skip_all, fields(container_count = request.get_ref().specs.len()))]
    async fn create_containers(
        &self,
        request: Request<pb::CreateContainersRequest>,
    ) -> Result<Response<pb::CreateContainersResponse>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        check_batch_size(request.specs.len(), "specs", &config).map_err(|e| status(&e))?;
        let max_concurrent = concurrency(request.max_concurrent, &config);
        let specs: Vec<ContainerSpec> = request.specs.into_iter().map(spec_from_wire).collect();
        let item_ids: Vec<String> = specs.iter().enumerate().map(|(index, spec)| spec.item_id(index)).collect();
        let outcomes =
            self.engine.create_batch(specs, &config.scope(), max_concurrent).await.map_err(|e| status(&e))?;
        let results = item_ids.into_iter().zip(outcomes).map(|(id, outcome)| container_result(id, outcome)).collect();
        Ok(Response::new(pb::CreateContainersResponse { results, max_concurrent }))
    }

    #[instrument(skip_all, fields(container_count = request.get_ref().container_ids.len()))]
    async fn remove_containers(
        &self,
        request: Request<pb::RemoveContainersRequest>,
    ) -> Result<Response<pb::RemoveContainersResponse>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        let action = ContainerAction::Remove { force: request.force, remove_volumes: request.remove_volumes };
        let (results, max_concurrent) =
            self.act(request.container_ids, request.max_concurrent, action, &config).await?;
        Ok(Response::new(pb::RemoveContainersResponse { results, max_concurrent }))
    }

    #[instrument(skip_all)]
    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        let selectors = selectors_from_wire(&request.label_selectors).map_err(|e| status(&e))?;
        let events = self.engine.events(&config.scope(), &selectors, &request.actions).await.map_err(|e| status(&e))?;
        let (sender, receiver) = mpsc::channel(EVENT_BUFFER);
        let forward = forward_events(events, sender, self.shutdown.clone(), self.engine.display_host().to_owned());
        // The forwarder outlives this handler: keep the call's correlation id
        // (for error details) and span (for logs) with it.
        let forward = forward.instrument(tracing::Span::current());
        match correlation::current() {
            Some(context) => tokio::spawn(correlation::scope(context, forward)),
            None => tokio::spawn(forward),
        };
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    #[instrument(skip_all)]
    async fn health(&self, _request: Request<pb::HealthRequest>) -> Result<Response<pb::HealthResponse>, Status> {
        let config = self.settings();
        let health = self.engine.health(&config.scope()).await;
        Ok(Response::new(pb::HealthResponse {
            engine_reachable: health.reachable,
            engine_version: health.engine_version,
            api_version: health.api_version,
            unreachable_reason: health.unreachable_reason,
            ping_latency: prost_types::Duration::try_from(health.ping_latency).ok(),
            managed_container_count: health.managed_container_count,
        }))
    }
}

/// Sends engine events to one caller until it goes away, the service shuts
/// down, or the engine stream fails (sent as the stream's final status).
async fn forward_events(
    events: impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + 'static,
    sender: mpsc::Sender<Result<pb::WatchEventsResponse, Status>>,
    shutdown: CancellationToken,
    display_host: String,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            () = sender.closed() => return,
            next = events.next() => next,
        };
        let item = match next {
            Some(Ok(event)) => Ok(event_to_wire(event)),
            Some(Err(error)) => Err(status(&error)),
            None => Err(status(&DockerError::EngineUnavailable {
                host: display_host.clone(),
                cause: "the engine closed the event stream".to_owned(),
            })),
        };
        let is_final = item.is_err();
        if sender.send(item).await.is_err() || is_final {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_timeouts_are_checked_against_the_settings() {
        let config = DockerConfig::default();
        let wire = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(stop_timeout_from_wire(None, &config), Ok(config.default_stop_timeout));
        assert_eq!(stop_timeout_from_wire(Some(wire(0, 0)), &config), Ok(Duration::ZERO));
        assert_eq!(stop_timeout_from_wire(Some(wire(3, 0)), &config), Ok(Duration::from_secs(3)));
        for bad in [wire(-1, 0), wire(121, 0)] {
            let error = stop_timeout_from_wire(Some(bad), &config).unwrap_err();
            assert_eq!(error.reason(), "INVALID_STOP_TIMEOUT", "{bad:?}");
            assert_eq!(RpcError::code(&error), Code::InvalidArgument);
        }
    }

    #[test]
    fn sample_windows_and_pages_are_checked() {
        let config = DockerConfig::default();
        let wire = |seconds| prost_types::Duration { seconds, nanos: 0 };
        assert_eq!(cpu_sample_window_from_wire(None, &config), Ok(Duration::from_millis(200)));
        assert_eq!(cpu_sample_window_from_wire(Some(wire(0)), &config), Ok(Duration::ZERO));
        assert!(cpu_sample_window_from_wire(Some(wire(11)), &config).is_err());
        assert!(cpu_sample_window_from_wire(Some(wire(-1)), &config).is_err());
        assert_eq!(page_size_from_wire(0), Ok(100));
        assert_eq!(page_size_from_wire(7), Ok(7));
        assert!(page_size_from_wire(-1).is_err());
        assert!(page_size_from_wire(1001).is_err());
        assert_eq!(page_token_from_wire(""), Ok(None));
        assert!(page_token_from_wire(&"a".repeat(64)).unwrap().is_some());
        assert_eq!(page_token_from_wire("../x"), Err(DockerError::InvalidPageToken));
    }

    #[test]
    fn batches_must_be_non_empty_and_bounded() {
        let config = DockerConfig { max_batch_size: 2, ..DockerConfig::default() };
        assert_eq!(
            check_batch_size(0, "container_ids", &config),
            Err(DockerError::EmptyBatch { field: "container_ids" })
        );
        assert_eq!(check_batch_size(2, "container_ids", &config), Ok(()));
        assert_eq!(check_batch_size(3, "specs", &config).unwrap_err().reason(), "BATCH_TOO_LARGE");
    }

    #[test]
    fn every_error_has_a_code() {
        let scope_error = DockerError::NotManaged { id: "x".into(), required: "`mesh.managed=true`".into() };
        assert_eq!(RpcError::code(&scope_error), Code::PermissionDenied);
        assert_eq!(RpcError::code(&DockerError::ContainerNotFound { id: "x".into() }), Code::NotFound);
        let down = DockerError::EngineUnavailable { host: "unix:///x".into(), cause: "no socket".into() };
        assert_eq!(RpcError::code(&down), Code::Unavailable);
        assert_eq!(down.retry_after(), Some(Duration::from_secs(1)));
    }
}
