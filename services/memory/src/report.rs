//! The memory report: each service's memory-based health, the top
//! consumers, and recommendations in the seed's words ("CRITICAL: ...",
//! "high memory usage (>80 %)", "consider reducing cache sizes"). Pure:
//! built from the latest snapshots and the open leaks.

use std::time::SystemTime;

use crate::heap::HeapFrame;
use crate::leak::Leak;
use crate::snapshot::{MemoryReading, Probe, Snapshot};
use crate::trend::LeakSeverity;

const MIB: f64 = 1024.0 * 1024.0;
/// Allocator pages held beyond live allocations worth a purge: at least
/// this much, and at least half the allocated bytes.
const PURGE_WORTHY_SLACK_BYTES: u64 = 64 * 1024 * 1024;

/// A service's health judged by its memory alone; ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemoryHealth {
    /// No leak, usage below the high-usage ratio.
    Healthy,
    /// No snapshot yet.
    NoData,
    /// A leak below critical, or usage above the high-usage ratio.
    Degraded,
    /// The latest snapshot could not reach the service.
    Unreachable,
    /// A critical leak, or usage above the critical-usage ratio.
    Critical,
}

/// The thresholds a report applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReportSettings {
    /// Usage share of the limit above which health degrades.
    pub high_usage_ratio: f64,
    /// Usage share of the limit above which health is critical.
    pub critical_usage_ratio: f64,
    /// Consumers listed.
    pub top_consumers: usize,
}

/// What the report knows about one service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceState {
    /// The service.
    pub service: String,
    /// Its latest snapshot.
    pub latest: Option<Snapshot>,
    /// Snapshots kept for it.
    pub snapshot_count: usize,
}

/// The memory of one service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceReport {
    /// The service.
    pub service: String,
    /// Its memory-based health.
    pub health: MemoryHealth,
    /// Why the health is not `Healthy`.
    pub health_reasons: Vec<String>,
    /// Its latest snapshot.
    pub latest: Option<Snapshot>,
    /// Snapshots kept for it.
    pub snapshot_count: usize,
    /// Resident bytes over the limit, when known.
    pub limit_usage_ratio: Option<f64>,
    /// The functions holding the most live heap, when a heap profile was taken.
    pub top_frames: Vec<HeapFrame>,
    /// Why a heap profile asked for could not be read.
    pub heap_profile_error: Option<String>,
}

/// One service or part, ranked by memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConsumer {
    /// The service.
    pub service: String,
    /// `resident_bytes`, or a gauge's name.
    pub part: String,
    /// Its size.
    pub bytes: u64,
}

/// The memory of the reported services.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryReport {
    /// When the report was built.
    pub generated_at: SystemTime,
    /// The worst health of the services.
    pub health: MemoryHealth,
    /// One entry per service, by name.
    pub services: Vec<ServiceReport>,
    /// Open leaks, most severe first.
    pub leaks: Vec<Leak>,
    /// The largest consumers, biggest first.
    pub top_consumers: Vec<MemoryConsumer>,
    /// What to do, most urgent first.
    pub recommendations: Vec<String>,
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / MIB)
}

#[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
fn mib_u64(bytes: u64) -> String {
    mib(bytes as f64)
}

fn leak_sentence(leak: &Leak) -> String {
    format!(
        "{} grows {}/h ({} over the last {:.0} s)",
        leak.series,
        mib(leak.finding.slope_bytes_per_second * 3600.0),
        mib(leak.finding.window_growth_bytes),
        leak.finding.window_seconds
    )
}

/// Recommendations by urgency; reports list them in this order.
#[derive(Debug, Default)]
struct Recommendations {
    critical: Vec<String>,
    urgent: Vec<String>,
    advice: Vec<String>,
}

/// Judges a reachable service's usage of its limit and its allocator's slack.
fn assess_usage(
    service: &str,
    reading: &MemoryReading,
    settings: &ReportSettings,
    reasons: &mut Vec<String>,
    recommendations: &mut Recommendations,
) -> MemoryHealth {
    let mut health = MemoryHealth::Healthy;
    if let Some(ratio) = reading.limit_usage_ratio() {
        let usage = format!(
            "{} of {} ({:.0} %)",
            mib_u64(reading.process.resident_bytes),
            mib_u64(reading.process.limit_bytes),
            ratio * 100.0
        );
        if ratio >= settings.critical_usage_ratio {
            health = MemoryHealth::Critical;
            reasons.push(format!("memory usage critical: {usage}"));
            recommendations.critical.push(format!(
                "CRITICAL: {service} memory usage is critical: {usage}; reduce its load or raise its limit now"
            ));
        } else if ratio >= settings.high_usage_ratio {
            health = MemoryHealth::Degraded;
            reasons.push(format!("high memory usage: {usage}"));
            recommendations.urgent.push(format!(
                "{service}: high memory usage detected (>{:.0} %): {usage}",
                settings.high_usage_ratio * 100.0
            ));
            if reading.gauges.iter().any(|(name, _)| name.contains("cache")) {
                recommendations.urgent.push(format!("- consider reducing cache sizes in {service}"));
            }
        }
    }
    if let Some(allocator) = &reading.allocator {
        let slack_bytes = allocator.resident_bytes.saturating_sub(allocator.allocated_bytes);
        if slack_bytes >= PURGE_WORTHY_SLACK_BYTES && slack_bytes >= allocator.allocated_bytes / 2 {
            recommendations.advice.push(format!(
                "{service}: the allocator holds {} more than is allocated; MemoryIntrospection/Purge returns it",
                mib_u64(slack_bytes)
            ));
        }
    }
    health
}

/// Builds the report over `services` (sorted by name by the caller) and
/// the open `leaks` of those services.
#[must_use]
pub fn build_report(
    services: Vec<ServiceState>,
    mut leaks: Vec<Leak>,
    settings: &ReportSettings,
    generated_at: SystemTime,
) -> MemoryReport {
    leaks.sort_by(|a, b| {
        b.finding
            .severity
            .cmp(&a.finding.severity)
            .then_with(|| a.service.cmp(&b.service))
            .then(a.series.cmp(&b.series))
    });
    let mut recommendations = Recommendations::default();
    let mut consumers = Vec::new();
    let mut reports = Vec::new();

    for state in services {
        let service_leaks: Vec<&Leak> = leaks.iter().filter(|leak| leak.service == state.service).collect();
        let mut health;
        let mut reasons = Vec::new();
        let mut limit_usage_ratio = None;
        match state.latest.as_ref().map(|snapshot| &snapshot.probe) {
            None => {
                health = MemoryHealth::NoData;
                reasons.push("no snapshot taken yet".to_owned());
            }
            Some(Probe::Unreachable { reason }) => {
                health = MemoryHealth::Unreachable;
                reasons.push(format!("unreachable: {reason}"));
                recommendations
                    .urgent
                    .push(format!("{} is unreachable ({reason}); its memory is unknown", state.service));
            }
            Some(Probe::Reached(reading)) => {
                consumers.push(MemoryConsumer {
                    service: state.service.clone(),
                    part: "resident_bytes".to_owned(),
                    bytes: reading.process.resident_bytes,
                });
                consumers.extend(reading.gauges.iter().filter(|(name, _)| name.ends_with("_bytes")).map(
                    |(name, bytes)| MemoryConsumer {
                        service: state.service.clone(),
                        part: name.clone(),
                        bytes: *bytes,
                    },
                ));
                limit_usage_ratio = reading.limit_usage_ratio();
                health = assess_usage(&state.service, reading, settings, &mut reasons, &mut recommendations);
            }
        }
        for leak in &service_leaks {
            let sentence = leak_sentence(leak);
            if leak.finding.severity == LeakSeverity::Critical {
                health = health.max(MemoryHealth::Critical);
                recommendations
                    .critical
                    .push(format!("CRITICAL: address the memory leak in {} immediately: {sentence}", state.service));
            } else {
                health = health.max(MemoryHealth::Degraded);
                recommendations.advice.push(format!(
                    "{}: possible memory leak ({:?}): {sentence}; take a heap profile (MemoryIntrospection/HeapProfile) \
                     to find where it allocates",
                    state.service, leak.finding.severity
                ));
            }
            reasons.push(format!("{:?} leak: {sentence}", leak.finding.severity));
        }
        reports.push(ServiceReport {
            service: state.service,
            health,
            health_reasons: reasons,
            latest: state.latest,
            snapshot_count: state.snapshot_count,
            limit_usage_ratio,
            top_frames: Vec::new(),
            heap_profile_error: None,
        });
    }

    consumers.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.service.cmp(&b.service)));
    consumers.truncate(settings.top_consumers);
    let health = reports.iter().map(|report| report.health).max().unwrap_or(MemoryHealth::NoData);
    let recommendations =
        recommendations.critical.into_iter().chain(recommendations.urgent).chain(recommendations.advice).collect();
    MemoryReport { generated_at, health, services: reports, leaks, top_consumers: consumers, recommendations }
}

/// Points each leaking service with a heap profile at the function holding
/// the most live bytes: where a leak grows is usually where to look.
pub fn add_leak_site_recommendations(report: &mut MemoryReport) {
    for service in &report.services {
        let leaking = report.leaks.iter().any(|leak| leak.service == service.service);
        if let (true, Some(frame)) = (leaking, service.top_frames.first()) {
            report.recommendations.push(format!(
                "{}: the largest live allocation site is {} ({} allocated there, {} below it); look there for the leak",
                service.service,
                frame.function,
                mib_u64(frame.self_bytes),
                mib_u64(frame.total_bytes)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use mesh_kit::allocator::AllocatorStats;
    use mesh_kit::introspection::ProcessMemory;

    use super::*;
    use crate::snapshot::Series;
    use crate::trend::LeakFinding;

    const MIB_U64: u64 = 1024 * 1024;

    fn settings() -> ReportSettings {
        ReportSettings { high_usage_ratio: 0.8, critical_usage_ratio: 0.95, top_consumers: 3 }
    }

    fn reached(service: &str, resident_mib: u64, limit_mib: u64, gauges: &[(&str, u64)]) -> ServiceState {
        let reading = MemoryReading {
            process: ProcessMemory {
                read_time: SystemTime::UNIX_EPOCH,
                resident_bytes: resident_mib * MIB_U64,
                proportional_bytes: None,
                virtual_bytes: resident_mib * MIB_U64,
                limit_bytes: limit_mib * MIB_U64,
            },
            allocator: Some(AllocatorStats {
                allocated_bytes: resident_mib * MIB_U64 / 4,
                resident_bytes: resident_mib * MIB_U64,
                ..AllocatorStats::default()
            }),
            gauges: gauges.iter().map(|(name, mib)| ((*name).to_owned(), mib * MIB_U64)).collect(),
        };
        let latest = Snapshot {
            snapshot_id: 1,
            service: service.to_owned(),
            taken_at: SystemTime::UNIX_EPOCH,
            probe: Probe::Reached(reading),
        };
        ServiceState { service: service.to_owned(), latest: Some(latest), snapshot_count: 1 }
    }

    fn leak(service: &str, severity: LeakSeverity) -> Leak {
        Leak {
            service: service.to_owned(),
            series: Series::Resident,
            finding: LeakFinding {
                severity,
                slope_bytes_per_second: 1024.0,
                window_growth_bytes: 11.0 * MIB,
                window_seconds: 3600.0,
                window_samples: 12,
                r_squared: 0.99,
            },
            detected_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_quiet_mesh_is_healthy_with_nothing_to_do() {
        let report = build_report(vec![reached("cache", 40, 1000, &[])], vec![], &settings(), SystemTime::UNIX_EPOCH);
        assert_eq!(report.health, MemoryHealth::Healthy);
        assert!(report.recommendations.is_empty(), "{:?}", report.recommendations);
        assert_eq!(report.services[0].limit_usage_ratio, Some(0.04));
    }

    #[test]
    fn health_takes_the_worst_of_usage_leaks_and_reachability() {
        let services = vec![
            reached("cache", 850, 1000, &[("cache_bytes", 600)]),
            reached("docker", 50, 1000, &[]),
            reached("vpn", 10, 1000, &[]),
            ServiceState {
                service: "gone".into(),
                latest: Some(Snapshot {
                    snapshot_id: 2,
                    service: "gone".into(),
                    taken_at: SystemTime::UNIX_EPOCH,
                    probe: Probe::Unreachable { reason: "connection refused".into() },
                }),
                snapshot_count: 1,
            },
            ServiceState { service: "new".into(), latest: None, snapshot_count: 0 },
        ];
        let leaks = vec![leak("vpn", LeakSeverity::Medium), leak("docker", LeakSeverity::Critical)];
        let report = build_report(services, leaks, &settings(), SystemTime::UNIX_EPOCH);
        let health: Vec<(&str, MemoryHealth)> =
            report.services.iter().map(|s| (s.service.as_str(), s.health)).collect();
        assert_eq!(
            health,
            [
                ("cache", MemoryHealth::Degraded),
                ("docker", MemoryHealth::Critical),
                ("vpn", MemoryHealth::Degraded),
                ("gone", MemoryHealth::Unreachable),
                ("new", MemoryHealth::NoData),
            ]
        );
        assert_eq!(report.health, MemoryHealth::Critical);
        assert_eq!(report.leaks[0].service, "docker", "most severe first");

        let recommendations = &report.recommendations;
        assert!(recommendations[0].starts_with("CRITICAL: address the memory leak in docker"), "{recommendations:?}");
        assert!(recommendations.iter().any(|r| r.contains("cache: high memory usage detected (>80 %)")));
        assert!(recommendations.iter().any(|r| r == "- consider reducing cache sizes in cache"));
        assert!(recommendations.iter().any(|r| r.starts_with("gone is unreachable (connection refused)")));
        assert!(recommendations.iter().any(|r| r.starts_with("vpn: possible memory leak (Medium)")));

        let top: Vec<(&str, &str)> =
            report.top_consumers.iter().map(|c| (c.service.as_str(), c.part.as_str())).collect();
        assert_eq!(top, [("cache", "resident_bytes"), ("cache", "cache_bytes"), ("docker", "resident_bytes")]);
    }

    #[test]
    fn usage_near_the_limit_is_critical_and_allocator_slack_suggests_a_purge() {
        let report = build_report(vec![reached("cache", 980, 1000, &[])], vec![], &settings(), SystemTime::UNIX_EPOCH);
        assert_eq!(report.health, MemoryHealth::Critical);
        assert!(
            report.recommendations[0]
                .starts_with("CRITICAL: cache memory usage is critical: 980.0 MiB of 1000.0 MiB (98 %)")
        );
        assert!(report.recommendations.iter().any(|r| r.contains("MemoryIntrospection/Purge")), "735 MiB of slack");
    }
}
