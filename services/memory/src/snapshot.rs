//! Snapshots and their history: what one probe of one service found, and
//! the latest `max_snapshots` of them per service.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::SystemTime;

use mesh_kit::allocator::AllocatorStats;
use mesh_kit::introspection::ProcessMemory;

/// What a probe of a service read.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryReading {
    /// The process's memory.
    pub process: ProcessMemory,
    /// The allocator's figures; `None` when the service does not run jemalloc.
    pub allocator: Option<AllocatorStats>,
    /// The service's gauges, by name.
    pub gauges: Vec<(String, u64)>,
}

/// A series of values the profiler follows over time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    /// The process's resident set size.
    Resident,
    /// Bytes in live allocations, from jemalloc.
    Allocated,
    /// A gauge the service registered.
    Gauge(String),
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resident => f.write_str("resident_bytes"),
            Self::Allocated => f.write_str("allocated_bytes"),
            Self::Gauge(name) => write!(f, "gauge:{name}"),
        }
    }
}

impl MemoryReading {
    /// Every series this reading has a value for.
    #[must_use]
    pub fn series_values(&self) -> Vec<(Series, u64)> {
        let mut values = vec![(Series::Resident, self.process.resident_bytes)];
        if let Some(allocator) = &self.allocator {
            values.push((Series::Allocated, allocator.allocated_bytes));
        }
        values.extend(self.gauges.iter().map(|(name, value)| (Series::Gauge(name.clone()), *value)));
        values
    }

    /// The value of one series, if the reading has it.
    #[must_use]
    pub fn value_of(&self, series: &Series) -> Option<u64> {
        match series {
            Series::Resident => Some(self.process.resident_bytes),
            Series::Allocated => self.allocator.map(|allocator| allocator.allocated_bytes),
            Series::Gauge(name) => self.gauges.iter().find(|(gauge, _)| gauge == name).map(|(_, value)| *value),
        }
    }

    /// Resident bytes over the process's limit; `None` when the limit is unknown.
    #[must_use]
    pub fn limit_usage_ratio(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
        (self.process.limit_bytes > 0).then(|| self.process.resident_bytes as f64 / self.process.limit_bytes as f64)
    }
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    /// The service answered.
    Reached(MemoryReading),
    /// The service did not answer; `reason` says why, for operators.
    Unreachable {
        /// Why, e.g. "connection refused" or "no answer within 1s".
        reason: String,
    },
}

/// One service's memory at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Increases with every snapshot the profiler takes.
    pub snapshot_id: u64,
    /// The service's name.
    pub service: String,
    /// When the snapshot was taken.
    pub taken_at: SystemTime,
    /// What the probe found.
    pub probe: Probe,
}

impl Snapshot {
    /// The reading, when the service answered.
    #[must_use]
    pub fn reading(&self) -> Option<&MemoryReading> {
        match &self.probe {
            Probe::Reached(reading) => Some(reading),
            Probe::Unreachable { .. } => None,
        }
    }
}

/// The latest `max_snapshots` snapshots of each service, oldest first.
#[derive(Debug)]
pub struct SnapshotHistory {
    max_snapshots: usize,
    next_snapshot_id: u64,
    by_service: BTreeMap<String, VecDeque<Snapshot>>,
}

impl SnapshotHistory {
    /// An empty history for `services`, keeping at most `max_snapshots` each.
    #[must_use]
    pub fn new(services: impl IntoIterator<Item = String>, max_snapshots: usize) -> Self {
        debug_assert!(max_snapshots > 0, "max_snapshots is validated to be at least 2");
        Self {
            max_snapshots,
            next_snapshot_id: 1,
            by_service: services.into_iter().map(|service| (service, VecDeque::new())).collect(),
        }
    }

    /// Whether `service` is watched.
    #[must_use]
    pub fn knows(&self, service: &str) -> bool {
        self.by_service.contains_key(service)
    }

    /// The watched services, by name.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.by_service.keys().map(String::as_str)
    }

    /// Records a probe of a watched service as a new snapshot, dropping the
    /// oldest past `max_snapshots`; `None` for an unknown service.
    pub fn record(&mut self, service: &str, taken_at: SystemTime, probe: Probe) -> Option<Snapshot> {
        let snapshots = self.by_service.get_mut(service)?;
        let snapshot = Snapshot { snapshot_id: self.next_snapshot_id, service: service.to_owned(), taken_at, probe };
        self.next_snapshot_id += 1;
        if snapshots.len() == self.max_snapshots {
            snapshots.pop_front();
        }
        snapshots.push_back(snapshot.clone());
        Some(snapshot)
    }

    /// The snapshots of `service`, oldest first.
    #[must_use]
    pub fn of(&self, service: &str) -> impl DoubleEndedIterator<Item = &Snapshot> + ExactSizeIterator {
        static NONE: VecDeque<Snapshot> = VecDeque::new();
        self.by_service.get(service).unwrap_or(&NONE).iter()
    }

    /// The latest snapshot of `service`.
    #[must_use]
    pub fn latest(&self, service: &str) -> Option<&Snapshot> {
        self.by_service.get(service)?.back()
    }

    /// Finds a kept snapshot by id.
    #[must_use]
    pub fn find(&self, snapshot_id: u64) -> Option<&Snapshot> {
        self.by_service.values().flatten().find(|snapshot| snapshot.snapshot_id == snapshot_id)
    }

    /// The latest `count` readings of `service` that reached it, oldest first.
    #[must_use]
    pub fn latest_readings(&self, service: &str, count: usize) -> Vec<(SystemTime, &MemoryReading)> {
        let mut readings: Vec<_> = self
            .of(service)
            .rev()
            .filter_map(|snapshot| snapshot.reading().map(|reading| (snapshot.taken_at, reading)))
            .take(count)
            .collect();
        readings.reverse();
        readings
    }
}

/// How one series changed between two snapshots of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesDelta {
    /// The series.
    pub series: Series,
    /// Its value in the earlier snapshot.
    pub from_bytes: Option<u64>,
    /// Its value in the later snapshot.
    pub to_bytes: Option<u64>,
}

impl SeriesDelta {
    /// `to - from`; 0 when either is missing.
    #[must_use]
    pub fn delta_bytes(&self) -> i64 {
        match (self.from_bytes, self.to_bytes) {
            (Some(from), Some(to)) => {
                let magnitude = i64::try_from(from.abs_diff(to)).unwrap_or(i64::MAX);
                if to >= from { magnitude } else { -magnitude }
            }
            _ => 0,
        }
    }
}

/// Every series present in either snapshot, largest growth first.
#[must_use]
pub fn compare(from: &Snapshot, to: &Snapshot) -> Vec<SeriesDelta> {
    let values = |snapshot: &Snapshot| -> BTreeMap<Series, u64> {
        snapshot.reading().map(|reading| reading.series_values().into_iter().collect()).unwrap_or_default()
    };
    let (from_values, to_values) = (values(from), values(to));
    let mut series: Vec<&Series> = from_values.keys().chain(to_values.keys()).collect();
    series.sort();
    series.dedup();
    let mut deltas: Vec<SeriesDelta> = series
        .into_iter()
        .map(|series| SeriesDelta {
            series: series.clone(),
            from_bytes: from_values.get(series).copied(),
            to_bytes: to_values.get(series).copied(),
        })
        .collect();
    deltas.sort_by(|a, b| b.delta_bytes().cmp(&a.delta_bytes()).then_with(|| a.series.cmp(&b.series)));
    deltas
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reading(resident_bytes: u64) -> Probe {
        Probe::Reached(MemoryReading {
            process: ProcessMemory {
                read_time: SystemTime::UNIX_EPOCH,
                resident_bytes,
                proportional_bytes: None,
                virtual_bytes: resident_bytes * 2,
                limit_bytes: 0,
            },
            allocator: None,
            gauges: vec![("cache_bytes".into(), resident_bytes / 2)],
        })
    }

    #[test]
    fn history_keeps_the_latest_snapshots_with_increasing_ids() {
        let mut history = SnapshotHistory::new(["a".to_owned(), "b".to_owned()], 3);
        let at = |seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        for second in 0..5 {
            history.record("a", at(second), reading(second * 10)).unwrap();
        }
        history.record("b", at(9), Probe::Unreachable { reason: "refused".into() }).unwrap();
        assert!(history.record("c", at(9), reading(1)).is_none());

        let ids: Vec<u64> = history.of("a").map(|s| s.snapshot_id).collect();
        assert_eq!(ids, [3, 4, 5]);
        assert_eq!(history.latest("b").unwrap().snapshot_id, 6);
        assert_eq!(history.find(4).unwrap().taken_at, at(3));
        assert!(history.find(1).is_none(), "dropped past max_snapshots");
        let readings = history.latest_readings("a", 2);
        assert_eq!(readings.iter().map(|(_, r)| r.process.resident_bytes).collect::<Vec<_>>(), [30, 40]);
        assert!(history.latest_readings("b", 2).is_empty());
    }

    #[test]
    fn comparisons_list_every_series_by_growth() {
        let snapshot =
            |probe| Snapshot { snapshot_id: 1, service: "a".into(), taken_at: SystemTime::UNIX_EPOCH, probe };
        let deltas = compare(&snapshot(reading(100)), &snapshot(reading(60)));
        let rows: Vec<(String, i64)> = deltas.iter().map(|d| (d.series.to_string(), d.delta_bytes())).collect();
        assert_eq!(rows, [("gauge:cache_bytes".to_owned(), -20), ("resident_bytes".to_owned(), -40)]);
        let gone = compare(&snapshot(reading(100)), &snapshot(Probe::Unreachable { reason: "refused".into() }));
        assert!(gone.iter().all(|d| d.to_bytes.is_none() && d.delta_bytes() == 0));
    }

    #[test]
    fn series_are_named_as_the_proto_documents() {
        let Probe::Reached(reading) = reading(100) else { unreachable!("a reading") };
        let names: Vec<String> = reading.series_values().iter().map(|(series, _)| series.to_string()).collect();
        assert_eq!(names, ["resident_bytes", "gauge:cache_bytes"]);
        assert_eq!(reading.value_of(&Series::Gauge("cache_bytes".into())), Some(50));
        assert_eq!(reading.value_of(&Series::Allocated), None);
        assert_eq!(reading.limit_usage_ratio(), None);
    }
}
