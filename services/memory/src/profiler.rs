//! `Profiler`: takes snapshots of every watched service on a schedule or on
//! demand, keeps their history, follows leaks and broadcasts leak alerts.
//! No tonic or proto types: `collector` probes, `grpc` serves.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use mesh_kit::CancellationToken;
use tokio::sync::broadcast;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::collector::Collector;
use crate::config::MemoryProfilerConfig;
use crate::error::MemoryProfilerError;
use crate::heap;
use crate::leak::{AlertKind, Leak, LeakAlert, LeakTracker, find_leaks};
use crate::report::{MemoryReport, ReportSettings, ServiceState, add_leak_site_recommendations, build_report};
use crate::snapshot::{Probe, SeriesDelta, Snapshot, SnapshotHistory, compare};

/// Alerts buffered for a slow `WatchAlerts` stream before it misses some.
const ALERT_BUFFER: usize = 256;

/// Two snapshots of one service, compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotComparison {
    /// The service.
    pub service: String,
    /// Time between the snapshots.
    pub elapsed: Duration,
    /// Every series, largest growth first.
    pub deltas: Vec<SeriesDelta>,
}

/// One page of a service's snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotPage {
    /// Newest first.
    pub snapshots: Vec<Snapshot>,
    /// The id to continue below; `None` on the last page.
    pub next_before_id: Option<u64>,
}

/// The profiler's state and settings.
#[derive(Debug)]
pub struct Profiler {
    config: MemoryProfilerConfig,
    collector: Collector,
    // A std mutex: it guards bookkeeping that takes microseconds and is never
    // held across an await (probes run before it is taken).
    state: Mutex<ProfilerState>,
    alerts: broadcast::Sender<LeakAlert>,
}

#[derive(Debug)]
struct ProfilerState {
    history: SnapshotHistory,
    leaks: LeakTracker,
}

impl Profiler {
    /// A profiler watching the collector's services with `config`.
    #[must_use]
    pub fn new(config: MemoryProfilerConfig, collector: Collector) -> Self {
        let history = SnapshotHistory::new(collector.services().map(str::to_owned), config.max_snapshots);
        let (alerts, _) = broadcast::channel(ALERT_BUFFER);
        Self { config, collector, state: Mutex::new(ProfilerState { history, leaks: LeakTracker::default() }), alerts }
    }

    fn state(&self) -> MutexGuard<'_, ProfilerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The named services, checked; every watched service when `services` is empty.
    fn resolve(&self, services: &[String]) -> Result<Vec<String>, MemoryProfilerError> {
        let state = self.state();
        if services.is_empty() {
            return Ok(state.history.services().map(str::to_owned).collect());
        }
        for service in services {
            if !state.history.knows(service) {
                return Err(MemoryProfilerError::UnknownService { service: service.clone() });
            }
        }
        Ok(services.to_vec())
    }

    /// Takes one snapshot of each named service (every one when empty),
    /// judges their trends and broadcasts what changed.
    pub async fn take_snapshots(&self, services: &[String]) -> Result<Vec<Snapshot>, MemoryProfilerError> {
        let services = self.resolve(services)?;
        let probes = self.collector.probe(&services).await;
        let taken_at = SystemTime::now();
        let mut snapshots = Vec::with_capacity(probes.len());
        let mut alerts = Vec::new();
        {
            let mut state = self.state();
            for (service, probe) in probes {
                if let Probe::Unreachable { reason } = &probe {
                    warn!(service, reason, "memory probe failed");
                }
                let Some(snapshot) = state.history.record(&service, taken_at, probe) else { continue };
                if self.config.leak_detection_enabled && snapshot.reading().is_some() {
                    let findings = find_leaks(
                        &state.history.latest_readings(&service, self.config.leak_window),
                        self.config.leak_window,
                        &self.config.leak_criteria(),
                    );
                    alerts.extend(state.leaks.update(&service, findings, taken_at));
                }
                snapshots.push(snapshot);
            }
            // Sent under the lock, so `watch` sees each alert either in its
            // open leaks or on its receiver, never both.
            for alert in alerts {
                self.announce(alert);
            }
        }
        debug!(snapshots = snapshots.len(), "memory snapshots taken");
        Ok(snapshots)
    }

    fn announce(&self, alert: LeakAlert) {
        match alert.kind {
            AlertKind::Raised | AlertKind::Escalated => warn!(
                service = alert.leak.service,
                series = %alert.leak.series,
                severity = ?alert.leak.finding.severity,
                growth_bytes_per_hour = alert.leak.finding.slope_bytes_per_second * 3600.0,
                kind = ?alert.kind,
                "memory leak suspected"
            ),
            AlertKind::Cleared => {
                info!(service = alert.leak.service, series = %alert.leak.series, "memory leak alert cleared");
            }
        }
        // No subscriber is not an error: open leaks are also in reports.
        let _ = self.alerts.send(alert);
    }

    /// Takes snapshots of every service every `snapshot_interval` until `shutdown`.
    pub async fn run_schedule(&self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.snapshot_interval);
        // A round slower than the interval delays the next one instead of bunching them up.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // Every service is known, so resolving cannot fail.
            let _ = self.take_snapshots(&[]).await;
        }
    }

    /// A page of `service`'s snapshots, newest first, below `before_id` when given.
    pub fn list_snapshots(
        &self,
        service: &str,
        page_size: usize,
        before_id: Option<u64>,
    ) -> Result<SnapshotPage, MemoryProfilerError> {
        if service.is_empty() {
            return Err(MemoryProfilerError::ServiceRequired);
        }
        let state = self.state();
        if !state.history.knows(service) {
            return Err(MemoryProfilerError::UnknownService { service: service.to_owned() });
        }
        let mut remaining = state
            .history
            .of(service)
            .rev()
            .filter(|snapshot| before_id.is_none_or(|before| snapshot.snapshot_id < before));
        let snapshots: Vec<Snapshot> = remaining.by_ref().take(page_size).cloned().collect();
        let next_before_id = match (remaining.next(), snapshots.last()) {
            (Some(_), Some(last)) => Some(last.snapshot_id),
            _ => None,
        };
        Ok(SnapshotPage { snapshots, next_before_id })
    }

    /// The report over the named services (every one when empty).
    pub fn report(&self, services: &[String]) -> Result<MemoryReport, MemoryProfilerError> {
        let mut services = self.resolve(services)?;
        services.sort();
        services.dedup();
        let state = self.state();
        let states = services
            .iter()
            .map(|service| ServiceState {
                service: service.clone(),
                latest: state.history.latest(service).cloned(),
                snapshot_count: state.history.of(service).len(),
            })
            .collect();
        let leaks = state.leaks.open().filter(|leak| services.contains(&leak.service)).cloned().collect();
        let settings = ReportSettings {
            high_usage_ratio: self.config.high_usage_ratio,
            critical_usage_ratio: self.config.critical_usage_ratio,
            top_consumers: self.config.top_consumers,
        };
        Ok(build_report(states, leaks, &settings, SystemTime::now()))
    }

    /// The report over the named services, with the top frames of a heap
    /// profile taken now from each of them; a service whose profile cannot
    /// be taken (profiling off, unreachable, stripped binary) says why.
    pub async fn report_with_heap_profiles(&self, services: &[String]) -> Result<MemoryReport, MemoryProfilerError> {
        let mut report = self.report(services)?;
        let names: Vec<String> = report.services.iter().map(|s| s.service.clone()).collect();
        let profiles = self.collector.heap_profiles(&names, self.config.heap_profile_timeout).await;
        for (service, outcome) in profiles {
            let Some(entry) = report.services.iter_mut().find(|s| s.service == service) else { continue };
            match outcome.and_then(|gz| heap::top_frames(&gz, self.config.top_frames).map_err(|e| e.to_string())) {
                Ok(frames) => entry.top_frames = frames,
                Err(reason) => entry.heap_profile_error = Some(reason),
            }
        }
        add_leak_site_recommendations(&mut report);
        Ok(report)
    }

    /// Compares two kept snapshots of the same service.
    pub fn compare(&self, from_id: u64, to_id: u64) -> Result<SnapshotComparison, MemoryProfilerError> {
        let state = self.state();
        let find = |snapshot_id, field| {
            state.history.find(snapshot_id).ok_or(MemoryProfilerError::SnapshotNotFound { snapshot_id, field })
        };
        let (from, to) = (find(from_id, "from_snapshot_id")?, find(to_id, "to_snapshot_id")?);
        if from.service != to.service {
            return Err(MemoryProfilerError::DifferentServices {
                from_service: from.service.clone(),
                to_service: to.service.clone(),
            });
        }
        Ok(SnapshotComparison {
            service: from.service.clone(),
            elapsed: to.taken_at.duration_since(from.taken_at).unwrap_or_default(),
            deltas: compare(from, to),
        })
    }

    /// The leaks open now and a receiver of every later alert, taken
    /// together so no alert falls between them.
    pub fn watch(
        &self,
        services: &[String],
    ) -> Result<(Vec<Leak>, broadcast::Receiver<LeakAlert>), MemoryProfilerError> {
        let services = self.resolve(services)?;
        let state = self.state();
        let open = state.leaks.open().filter(|leak| services.contains(&leak.service)).cloned().collect();
        Ok((open, self.alerts.subscribe()))
    }
}
