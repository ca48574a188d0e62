//! Per-program latency histograms and error counts, kept with atomics so the
//! hot path takes no lock. `GetCallMetrics` serves them: typed from
//! [`Metrics::snapshot`], and as Prometheus text from [`Metrics::render_prometheus`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::params::Program;

/// Upper bounds of the latency buckets, in milliseconds.
const BUCKET_BOUNDS_MS: [u64; 13] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 120_000];

/// One program's counters.
#[derive(Debug, Default)]
struct ProgramCounters {
    /// Calls per bucket; the last slot counts calls above every bound.
    buckets: [AtomicU64; BUCKET_BOUNDS_MS.len() + 1],
    calls: AtomicU64,
    latency_sum_micros: AtomicU64,
    errors: AtomicU64,
}

/// Latency and errors of every remote program.
#[derive(Debug, Default)]
pub struct Metrics {
    programs: [ProgramCounters; Program::ALL.len()],
    /// Error counts by program and reason; errors are rare, so a lock is fine here.
    errors_by_reason: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

/// A copy of one program's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    /// The remote program.
    pub program: &'static str,
    /// Completed calls, failed ones included.
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// Time spent in every call together.
    pub total_latency: Duration,
    /// Cumulative counts per bucket bound (ms), as Prometheus expects.
    pub cumulative_buckets: Vec<(u64, u64)>,
    /// Failed calls by `ErrorInfo` reason, by reason order.
    pub errors_by_reason: Vec<(&'static str, u64)>,
}

fn index_of(program: Program) -> usize {
    Program::ALL.iter().position(|p| *p == program).unwrap_or_default()
}

impl Metrics {
    /// Records one completed call (all attempts together).
    pub fn record(&self, program: Program, elapsed: Duration, error_reason: Option<&'static str>) {
        let counters = &self.programs[index_of(program)];
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_MS.iter().position(|bound| elapsed_ms <= *bound).unwrap_or(BUCKET_BOUNDS_MS.len());
        counters.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        counters.calls.fetch_add(1, Ordering::Relaxed);
        counters
            .latency_sum_micros
            .fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        if let Some(reason) = error_reason {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            let mut by_reason = self.errors_by_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *by_reason.entry((program.name(), reason)).or_default() += 1;
        }
    }

    /// The counters of one program.
    #[must_use]
    pub fn snapshot(&self, program: Program) -> ProgramStats {
        let counters = &self.programs[index_of(program)];
        let mut cumulative = 0;
        let cumulative_buckets = BUCKET_BOUNDS_MS
            .iter()
            .zip(&counters.buckets)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        let errors_by_reason = self
            .errors_by_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|((name, _), _)| *name == program.name())
            .map(|((_, reason), count)| (*reason, *count))
            .collect();
        ProgramStats {
            program: program.name(),
            calls: counters.calls.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
            total_latency: Duration::from_micros(counters.latency_sum_micros.load(Ordering::Relaxed)),
            cumulative_buckets,
            errors_by_reason,
        }
    }

    /// Every counter in the Prometheus text exposition format.
    #[must_use]
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP virtualmin_call_duration_seconds Latency of Virtualmin remote programs, retries included.\n",
        );
        out.push_str("# TYPE virtualmin_call_duration_seconds histogram\n");
        for program in Program::ALL {
            let stats = self.snapshot(program);
            let name = stats.program;
            for (bound_ms, count) in &stats.cumulative_buckets {
                let bound_secs = Duration::from_millis(*bound_ms).as_secs_f64();
                // Writing to a String cannot fail.
                let _ = writeln!(
                    out,
                    "virtualmin_call_duration_seconds_bucket{{program=\"{name}\",le=\"{bound_secs}\"}} {count}"
                );
            }
            let sum_secs = stats.total_latency.as_secs_f64();
            let _ = writeln!(
                out,
                "virtualmin_call_duration_seconds_bucket{{program=\"{name}\",le=\"+Inf\"}} {}",
                stats.calls
            );
            let _ = writeln!(out, "virtualmin_call_duration_seconds_sum{{program=\"{name}\"}} {sum_secs}");
            let _ = writeln!(out, "virtualmin_call_duration_seconds_count{{program=\"{name}\"}} {}", stats.calls);
        }
        out.push_str("# HELP virtualmin_call_errors_total Failed Virtualmin calls by program and reason.\n");
        out.push_str("# TYPE virtualmin_call_errors_total counter\n");
        let by_reason = self.errors_by_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((program, reason), count) in by_reason.iter() {
            let _ = writeln!(out, "virtualmin_call_errors_total{{program=\"{program}\",reason=\"{reason}\"}} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_land_in_cumulative_buckets_and_errors_by_reason() {
        let metrics = Metrics::default();
        metrics.record(Program::Info, Duration::from_millis(3), None);
        metrics.record(Program::Info, Duration::from_millis(70), Some("VIRTUALMIN_TIMEOUT"));
        let stats = metrics.snapshot(Program::Info);
        assert_eq!(stats.calls, 2);
        assert_eq!(stats.errors, 1);
        assert_eq!(stats.cumulative_buckets[0], (5, 1));
        assert_eq!(stats.cumulative_buckets[4], (100, 2));
        assert_eq!(stats.total_latency, Duration::from_millis(73));
        assert_eq!(stats.errors_by_reason, [("VIRTUALMIN_TIMEOUT", 1)]);
        let text = metrics.render_prometheus();
        assert!(
            text.contains("virtualmin_call_errors_total{program=\"info\",reason=\"VIRTUALMIN_TIMEOUT\"} 1"),
            "{text}"
        );
        assert!(text.contains("virtualmin_call_duration_seconds_count{program=\"info\"} 2"), "{text}");
    }
}
