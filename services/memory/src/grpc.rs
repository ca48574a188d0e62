//! `MemoryProfilerGrpc`: `mesh.memory.v1.MemoryProfiler` over the
//! [`Profiler`]. It converts wire types to domain values and back; with
//! `collector`, the only module of this crate that knows tonic or the proto.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_kit::error::{RpcError, to_status, to_status_proto};
use mesh_proto::memory::v1 as pb;
use mesh_proto::memory::v1::memory_profiler_server::MemoryProfiler;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tracing::instrument;

use crate::error::MemoryProfilerError;
use crate::leak::{AlertKind, Leak, LeakAlert};
use crate::profiler::Profiler;
use crate::report::{MemoryConsumer, MemoryHealth, MemoryReport, ServiceReport};
use crate::snapshot::{Probe, Snapshot};
use crate::trend::LeakSeverity;

/// Snapshots per `ListSnapshots` page when the request names no size.
const DEFAULT_PAGE_SIZE: i32 = 50;
/// Largest `ListSnapshots` page.
const MAX_PAGE_SIZE: i32 = 1000;

impl RpcError for MemoryProfilerError {
    fn code(&self) -> Code {
        match self {
            Self::UnknownService { .. } | Self::SnapshotNotFound { .. } => Code::NotFound,
            Self::ServiceRequired
            | Self::DifferentServices { .. }
            | Self::InvalidPageSize { .. }
            | Self::InvalidPageToken => Code::InvalidArgument,
            Self::TargetUnreachable { .. } => Code::Unavailable,
        }
    }

    fn reason(&self) -> &'static str {
        MemoryProfilerError::reason(self)
    }

    fn domain(&self) -> &'static str {
        "mesh.memory.v1"
    }

    fn field(&self) -> Option<&'static str> {
        MemoryProfilerError::field(self)
    }
}

fn status(error: &MemoryProfilerError) -> Status {
    to_status(error)
}

/// The gRPC face of the profiler.
#[derive(Debug, Clone)]
pub struct MemoryProfilerGrpc {
    profiler: Arc<Profiler>,
}

impl MemoryProfilerGrpc {
    /// Serves `profiler`.
    #[must_use]
    pub fn new(profiler: Arc<Profiler>) -> Self {
        Self { profiler }
    }
}

// === domain -> wire ===

fn snapshot_to_wire(snapshot: &Snapshot) -> pb::Snapshot {
    let mut wire = pb::Snapshot {
        snapshot_id: snapshot.snapshot_id,
        service: snapshot.service.clone(),
        take_time: Some(snapshot.taken_at.into()),
        ..pb::Snapshot::default()
    };
    match &snapshot.probe {
        Probe::Reached(reading) => {
            wire.set_reachability(pb::Reachability::Reachable);
            let process = &reading.process;
            wire.process = Some(pb::ProcessMemory {
                read_time: Some(process.read_time.into()),
                resident_bytes: process.resident_bytes,
                proportional_bytes: process.proportional_bytes,
                virtual_bytes: process.virtual_bytes,
                limit_bytes: process.limit_bytes,
            });
            wire.allocator = reading.allocator.map(|allocator| pb::AllocatorMemory {
                allocated_bytes: allocator.allocated_bytes,
                active_bytes: allocator.active_bytes,
                resident_bytes: allocator.resident_bytes,
                mapped_bytes: allocator.mapped_bytes,
                retained_bytes: allocator.retained_bytes,
            });
            wire.gauges = reading
                .gauges
                .iter()
                .map(|(name, value)| pb::MemoryGauge { name: name.clone(), value: *value })
                .collect();
        }
        Probe::Unreachable { reason } => {
            wire.set_reachability(pb::Reachability::Unreachable);
            wire.probe_status = Some(to_status_proto(&MemoryProfilerError::TargetUnreachable {
                service: snapshot.service.clone(),
                reason: reason.clone(),
            }));
        }
    }
    wire
}

fn severity_to_wire(severity: LeakSeverity) -> pb::LeakSeverity {
    match severity {
        LeakSeverity::Low => pb::LeakSeverity::Low,
        LeakSeverity::Medium => pb::LeakSeverity::Medium,
        LeakSeverity::High => pb::LeakSeverity::High,
        LeakSeverity::Critical => pb::LeakSeverity::Critical,
    }
}

/// The least severity a filter lets through; `None` for unset (every severity).
fn severity_from_wire(severity: pb::LeakSeverity) -> Option<LeakSeverity> {
    match severity {
        pb::LeakSeverity::Unspecified => None,
        pb::LeakSeverity::Low => Some(LeakSeverity::Low),
        pb::LeakSeverity::Medium => Some(LeakSeverity::Medium),
        pb::LeakSeverity::High => Some(LeakSeverity::High),
        pb::LeakSeverity::Critical => Some(LeakSeverity::Critical),
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // growth is positive and far below 2^64
fn leak_to_wire(leak: &Leak) -> pb::Leak {
    let finding = &leak.finding;
    pb::Leak {
        service: leak.service.clone(),
        series: leak.series.to_string(),
        severity: severity_to_wire(finding.severity).into(),
        growth_bytes_per_hour: finding.slope_bytes_per_second * 3600.0,
        window_growth_bytes: finding.window_growth_bytes.max(0.0) as u64,
        window: prost_types::Duration::try_from(Duration::from_secs_f64(finding.window_seconds.max(0.0))).ok(),
        window_snapshots: u32::try_from(finding.window_samples).unwrap_or(u32::MAX),
        fit_r_squared: finding.r_squared,
        detect_time: Some(leak.detected_at.into()),
    }
}

fn health_to_wire(health: MemoryHealth) -> pb::MemoryHealth {
    match health {
        MemoryHealth::Healthy => pb::MemoryHealth::Healthy,
        MemoryHealth::NoData => pb::MemoryHealth::NoData,
        MemoryHealth::Degraded => pb::MemoryHealth::Degraded,
        MemoryHealth::Unreachable => pb::MemoryHealth::Unreachable,
        MemoryHealth::Critical => pb::MemoryHealth::Critical,
    }
}

fn service_report_to_wire(report: &ServiceReport) -> pb::ServiceReport {
    pb::ServiceReport {
        service: report.service.clone(),
        health: health_to_wire(report.health).into(),
        health_reasons: report.health_reasons.clone(),
        latest_snapshot: report.latest.as_ref().map(snapshot_to_wire),
        snapshot_count: u32::try_from(report.snapshot_count).unwrap_or(u32::MAX),
        limit_usage_ratio: report.limit_usage_ratio.unwrap_or(0.0),
        top_frames: report
            .top_frames
            .iter()
            .map(|frame| pb::HeapFrame {
                function: frame.function.clone(),
                self_bytes: frame.self_bytes,
                total_bytes: frame.total_bytes,
            })
            .collect(),
        heap_profile_error: report.heap_profile_error.clone().unwrap_or_default(),
    }
}

fn consumer_to_wire(consumer: &MemoryConsumer) -> pb::MemoryConsumer {
    pb::MemoryConsumer { service: consumer.service.clone(), part: consumer.part.clone(), bytes: consumer.bytes }
}

fn report_to_wire(report: &MemoryReport) -> pb::MemoryReport {
    pb::MemoryReport {
        generate_time: Some(report.generated_at.into()),
        health: health_to_wire(report.health).into(),
        services: report.services.iter().map(service_report_to_wire).collect(),
        leaks: report.leaks.iter().map(leak_to_wire).collect(),
        top_consumers: report.top_consumers.iter().map(consumer_to_wire).collect(),
        recommendations: report.recommendations.clone(),
    }
}

fn alert_to_wire(kind: AlertKind, leak: &Leak, alerted_at: SystemTime) -> pb::WatchAlertsResponse {
    let kind = match kind {
        AlertKind::Raised => pb::AlertKind::Raised,
        AlertKind::Escalated => pb::AlertKind::Escalated,
        AlertKind::Cleared => pb::AlertKind::Cleared,
    };
    pb::WatchAlertsResponse { kind: kind.into(), leak: Some(leak_to_wire(leak)), alert_time: Some(alerted_at.into()) }
}

// === wire -> domain ===

fn page_size_from_wire(page_size: i32) -> Result<usize, MemoryProfilerError> {
    match page_size {
        0 => Ok(DEFAULT_PAGE_SIZE.unsigned_abs() as usize),
        1..=MAX_PAGE_SIZE => Ok(page_size.unsigned_abs() as usize),
        _ => Err(MemoryProfilerError::InvalidPageSize { page_size, max: MAX_PAGE_SIZE }),
    }
}

/// Page tokens carry the id below which the next page starts, in hex with
/// a prefix, so a token from another list is refused rather than misread.
const PAGE_TOKEN_PREFIX: &str = "before-";

fn page_token_from_wire(page_token: &str) -> Result<Option<u64>, MemoryProfilerError> {
    if page_token.is_empty() {
        return Ok(None);
    }
    page_token
        .strip_prefix(PAGE_TOKEN_PREFIX)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map(Some)
        .ok_or(MemoryProfilerError::InvalidPageToken)
}

fn page_token_to_wire(before_id: Option<u64>) -> String {
    before_id.map(|id| format!("{PAGE_TOKEN_PREFIX}{id:x}")).unwrap_or_default()
}

// === WatchAlerts ===

/// Alerts for one `WatchAlerts` caller: the open leaks first, then every
/// later alert that passes its filter. A CLEARED alert is sent only for a
/// leak the caller heard about, whatever its severity by then.
async fn forward_alerts(
    open_leaks: Vec<Leak>,
    mut alerts: broadcast::Receiver<LeakAlert>,
    services: Vec<String>,
    min_severity: Option<LeakSeverity>,
    sender: mpsc::Sender<Result<pb::WatchAlertsResponse, Status>>,
) {
    let passes = |leak: &Leak| min_severity.is_none_or(|min| leak.finding.severity >= min);
    let mut announced = BTreeSet::new();
    let now = SystemTime::now();
    for leak in open_leaks.iter().filter(|leak| passes(leak)) {
        announced.insert((leak.service.clone(), leak.series.clone()));
        if sender.send(Ok(alert_to_wire(AlertKind::Raised, leak, now))).await.is_err() {
            return;
        }
    }
    loop {
        let alert = tokio::select! {
            () = sender.closed() => return,
            received = alerts.recv() => match received {
                Ok(alert) => alert,
                // A slow caller misses alerts; the report still has every open leak.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let leak = &alert.leak;
        if !services.is_empty() && !services.contains(&leak.service) {
            continue;
        }
        let key = (leak.service.clone(), leak.series.clone());
        let send = match alert.kind {
            AlertKind::Cleared => announced.remove(&key),
            AlertKind::Raised | AlertKind::Escalated => {
                passes(leak) && {
                    announced.insert(key);
                    true
                }
            }
        };
        if send && sender.send(Ok(alert_to_wire(alert.kind, leak, alert.alerted_at))).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl MemoryProfiler for MemoryProfilerGrpc {
    type WatchAlertsStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAlertsResponse, Status>> + Send>>;

    #[instrument(skip_all)]
    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let request = request.into_inner();
        let page_size = page_size_from_wire(request.page_size).map_err(|e| status(&e))?;
        let before_id = page_token_from_wire(&request.page_token).map_err(|e| status(&e))?;
        let page = self.profiler.list_snapshots(&request.service, page_size, before_id).map_err(|e| status(&e))?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: page.snapshots.iter().map(snapshot_to_wire).collect(),
            next_page_token: page_token_to_wire(page.next_before_id),
        }))
    }

    #[instrument(skip_all)]
    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::GetReportResponse>, Status> {
        let request = request.into_inner();
        let report = if request.include_heap_profiles {
            self.profiler.report_with_heap_profiles(&request.services).await
        } else {
            self.profiler.report(&request.services)
        }
        .map_err(|e| status(&e))?;
        Ok(Response::new(pb::GetReportResponse { report: Some(report_to_wire(&report)) }))
    }

    #[instrument(skip_all)]
    async fn compare_snapshots(
        &self,
        request: Request<pb::CompareSnapshotsRequest>,
    ) -> Result<Response<pb::CompareSnapshotsResponse>, Status> {
        let request = request.into_inner();
        let comparison =
            self.profiler.compare(request.from_snapshot_id, request.to_snapshot_id).map_err(|e| status(&e))?;
        Ok(Response::new(pb::CompareSnapshotsResponse {
            service: comparison.service,
            elapsed: prost_types::Duration::try_from(comparison.elapsed).ok(),
            deltas: comparison
                .deltas
                .iter()
                .map(|delta| pb::SeriesDelta {
                    series: delta.series.to_string(),
                    from_value: delta.from_bytes,
                    to_value: delta.to_bytes,
                    delta: delta.delta_bytes(),
                })
                .collect(),
        }))
    }

    #[instrument(skip_all)]
    async fn trigger_snapshot(
        &self,
        request: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::TriggerSnapshotResponse>, Status> {
        let snapshots = self.profiler.take_snapshots(&request.into_inner().services).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::TriggerSnapshotResponse { snapshots: snapshots.iter().map(snapshot_to_wire).collect() }))
    }

    #[instrument(skip_all)]
    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let request = request.into_inner();
        let min_severity = severity_from_wire(request.min_severity());
        let (open_leaks, alerts) = self.profiler.watch(&request.services).map_err(|e| status(&e))?;
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(forward_alerts(open_leaks, alerts, request.services, min_severity, sender));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_are_capped() {
        assert_eq!(page_size_from_wire(0), Ok(50));
        assert_eq!(page_size_from_wire(1000), Ok(1000));
        assert_eq!(page_size_from_wire(1001), Err(MemoryProfilerError::InvalidPageSize { page_size: 1001, max: 1000 }));
        assert!(page_size_from_wire(-1).is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        for id in [None, Some(1), Some(u64::MAX)] {
            assert_eq!(page_token_from_wire(&page_token_to_wire(id)), Ok(id));
        }
        assert_eq!(page_token_from_wire("42"), Err(MemoryProfilerError::InvalidPageToken));
        assert_eq!(page_token_from_wire("before-zz"), Err(MemoryProfilerError::InvalidPageToken));
    }
}
