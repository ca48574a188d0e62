//! Whether the cache is healthy or degraded: memory above its share of the
//! budget, or a hit ratio below the floor once enough reads were seen.

use crate::config::CacheConfig;
use crate::store::StoreStats;

/// The verdict and the figures behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    /// No threshold is crossed.
    pub healthy: bool,
    /// One sentence per crossed threshold.
    pub reasons: Vec<String>,
    /// Bytes held over the budget.
    pub memory_used_ratio: f64,
    /// Hits over reads.
    pub hit_ratio: f64,
}

/// Judges `stats` against the thresholds in `config`.
#[must_use]
#[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
pub fn assess(stats: &StoreStats, config: &CacheConfig) -> HealthReport {
    let memory_used_ratio = stats.bytes as f64 / stats.memory_budget_bytes.max(1) as f64;
    let mut reasons = Vec::new();
    if memory_used_ratio > config.memory_degraded_ratio {
        reasons.push(format!(
            "memory use is {:.0}% of the budget (threshold {:.0}%)",
            memory_used_ratio * 100.0,
            config.memory_degraded_ratio * 100.0
        ));
    }
    let reads = stats.hits + stats.misses;
    if config.min_hit_ratio > 0.0 && reads >= config.min_reads_for_hit_ratio && stats.hit_ratio < config.min_hit_ratio {
        reasons.push(format!(
            "hit ratio is {:.3} over {reads} reads (floor {:.3})",
            stats.hit_ratio, config.min_hit_ratio
        ));
    }
    HealthReport { healthy: reasons.is_empty(), reasons, memory_used_ratio, hit_ratio: stats.hit_ratio }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(bytes: u64, hits: u64, misses: u64) -> StoreStats {
        #[allow(clippy::cast_precision_loss)]
        let hit_ratio = if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
        StoreStats {
            hits,
            misses,
            hit_ratio,
            evictions: 0,
            expirations: 0,
            entries: 1,
            bytes,
            weight: bytes,
            memory_budget_bytes: 1000,
            max_entries: 10,
            tag_counts: Vec::new(),
        }
    }

    #[test]
    fn thresholds_degrade_with_reasons() {
        let config = CacheConfig::default();
        assert!(assess(&stats(100, 90, 10), &config).healthy);
        let full = assess(&stats(950, 90, 10), &config);
        assert!(!full.healthy && full.reasons[0].contains("memory use is 95%"), "{full:?}");
        let cold = assess(&stats(100, 10, 90), &config);
        assert!(!cold.healthy && cold.reasons[0].contains("hit ratio"), "{cold:?}");
    }

    #[test]
    fn a_cold_cache_is_not_judged_on_its_hit_ratio() {
        assert!(assess(&stats(0, 0, 5), &CacheConfig::default()).healthy);
    }
}
