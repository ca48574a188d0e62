//! Leaks over time: which series of which service grow like a leak now,
//! and the alerts raised as leaks appear, worsen and stop.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::snapshot::{MemoryReading, Series};
use crate::trend::{LeakCriteria, LeakFinding, Sample, detect_leak};

/// A series found leaking.
#[derive(Clone, Debug, PartialEq)]
pub struct Leak {
    /// The service.
    pub service: String,
    /// The leaking series.
    pub series: Series,
    /// The latest judgement of its window.
    pub finding: LeakFinding,
    /// When the leak was first detected.
    pub detected_at: SystemTime,
}

/// What happened to a leak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    /// A series started to grow like a leak.
    Raised,
    /// An open leak reached a higher severity.
    Escalated,
    /// A series stopped growing like a leak.
    Cleared,
}

/// One change to the open leaks.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakAlert {
    /// What happened.
    pub kind: AlertKind,
    /// The leak; for `Cleared`, as last detected.
    pub leak: Leak,
    /// When it happened.
    pub alerted_at: SystemTime,
}

/// Judges every series of the latest `window` readings (oldest first) that
/// has a value in each of them; a series seen in fewer is not judged yet.
#[must_use]
pub fn find_leaks(
    readings: &[(SystemTime, &MemoryReading)],
    window: usize,
    criteria: &LeakCriteria,
) -> Vec<(Series, LeakFinding)> {
    if readings.len() < window {
        return Vec::new();
    }
    let readings = &readings[readings.len() - window..];
    let Some((origin, latest)) = readings.first().map(|(origin, _)| *origin).zip(readings.last()) else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    for (series, _) in latest.1.series_values() {
        let samples: Vec<Sample> = readings
            .iter()
            .filter_map(|(taken_at, reading)| {
                let seconds = taken_at.duration_since(origin).ok()?.as_secs_f64();
                #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
                reading.value_of(&series).map(|bytes| Sample { seconds, bytes: bytes as f64 })
            })
            .collect();
        if samples.len() < window {
            continue;
        }
        if let Some(finding) = detect_leak(&samples, criteria) {
            findings.push((series, finding));
        }
    }
    findings
}

/// The open leaks of every service.
#[derive(Debug, Default)]
pub struct LeakTracker {
    open: BTreeMap<(String, Series), Leak>,
}

impl LeakTracker {
    /// Replaces the open leaks of `service` with `findings`, the series
    /// found leaking in its latest window, and returns what changed.
    pub fn update(&mut self, service: &str, findings: Vec<(Series, LeakFinding)>, now: SystemTime) -> Vec<LeakAlert> {
        let mut alerts = Vec::new();
        let mut still_open = BTreeMap::new();
        for (series, finding) in findings {
            let key = (service.to_owned(), series.clone());
            let leak = if let Some(previous) = self.open.remove(&key) {
                let leak = Leak { finding, ..previous.clone() };
                if finding.severity > previous.finding.severity {
                    alerts.push(LeakAlert { kind: AlertKind::Escalated, leak: leak.clone(), alerted_at: now });
                }
                leak
            } else {
                let leak = Leak { service: service.to_owned(), series, finding, detected_at: now };
                alerts.push(LeakAlert { kind: AlertKind::Raised, leak: leak.clone(), alerted_at: now });
                leak
            };
            still_open.insert(key, leak);
        }
        let stopped: Vec<(String, Series)> = self.open.keys().filter(|(owner, _)| owner == service).cloned().collect();
        for key in stopped {
            if let Some(leak) = self.open.remove(&key) {
                alerts.push(LeakAlert { kind: AlertKind::Cleared, leak, alerted_at: now });
            }
        }
        self.open.extend(still_open);
        alerts
    }

    /// Every open leak, by service and series.
    pub fn open(&self) -> impl Iterator<Item = &Leak> {
        self.open.values()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_kit::introspection::ProcessMemory;

    use super::*;
    use crate::trend::LeakSeverity;

    const MIB: u64 = 1024 * 1024;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn reading(resident_bytes: u64, gauges: &[(&str, u64)]) -> MemoryReading {
        MemoryReading {
            process: ProcessMemory {
                read_time: SystemTime::UNIX_EPOCH,
                resident_bytes,
                proportional_bytes: None,
                virtual_bytes: resident_bytes,
                limit_bytes: 0,
            },
            allocator: None,
            gauges: gauges.iter().map(|(name, value)| ((*name).to_owned(), *value)).collect(),
        }
    }

    fn finding(severity: LeakSeverity) -> LeakFinding {
        LeakFinding {
            severity,
            slope_bytes_per_second: 1.0,
            window_growth_bytes: 1.0,
            window_seconds: 1.0,
            window_samples: 3,
            r_squared: 1.0,
        }
    }

    #[test]
    fn only_series_present_in_the_whole_window_are_judged() {
        let readings: Vec<MemoryReading> = (0..6)
            .map(|second| {
                let leaking = [("leaky_bytes", second * 2 * MIB)];
                if second < 3 { reading(50 * MIB, &[]) } else { reading(50 * MIB, &leaking) }
            })
            .collect();
        let timed: Vec<(SystemTime, &MemoryReading)> = (0..).map(at).zip(&readings).collect();
        let criteria = LeakCriteria { threshold_bytes: 1024.0 * 1024.0, min_r_squared: 0.8 };
        assert!(find_leaks(&timed[..2], 3, &criteria).is_empty(), "window not full");
        assert!(find_leaks(&timed[..5], 3, &criteria).is_empty(), "the gauge has only 2 samples");
        let found = find_leaks(&timed, 3, &criteria);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Series::Gauge("leaky_bytes".into()));
        assert_eq!(found[0].1.severity, LeakSeverity::Medium, "4 MiB over 2 s against 1 MiB");
    }

    #[test]
    fn leaks_are_raised_escalated_and_cleared_once() {
        let mut tracker = LeakTracker::default();
        let kinds = |alerts: Vec<LeakAlert>| alerts.into_iter().map(|a| a.kind).collect::<Vec<_>>();
        let series = || Series::Gauge("g".into());

        assert_eq!(
            kinds(tracker.update("a", vec![(series(), finding(LeakSeverity::Low))], at(1))),
            [AlertKind::Raised]
        );
        assert!(tracker.update("a", vec![(series(), finding(LeakSeverity::Low))], at(2)).is_empty());
        assert_eq!(
            kinds(tracker.update("a", vec![(series(), finding(LeakSeverity::High))], at(3))),
            [AlertKind::Escalated]
        );
        assert!(tracker.update("a", vec![(series(), finding(LeakSeverity::Medium))], at(4)).is_empty());
        assert!(tracker.update("b", vec![], at(5)).is_empty(), "another service leaves a's leaks open");
        let open: Vec<&Leak> = tracker.open().collect();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].detected_at, at(1));
        assert_eq!(open[0].finding.severity, LeakSeverity::Medium);
        assert_eq!(kinds(tracker.update("a", vec![], at(6))), [AlertKind::Cleared]);
        assert_eq!(tracker.open().count(), 0);
    }
}
