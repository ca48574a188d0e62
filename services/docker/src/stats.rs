//! Resource use from engine stats samples, computed as `docker stats` does:
//! CPU from the difference of two samples, memory without the page cache,
//! network and block IO summed over interfaces and devices. Plain Rust over
//! the engine's sample type; the engine calls live in `engine`.

use std::str::FromStr;
use std::time::SystemTime;

use bollard::models::{ContainerBlkioStats, ContainerCpuStats, ContainerMemoryStats, ContainerStatsResponse};

/// Resource use of one container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceUsage {
    /// CPU use over the sample window, 100 = one busy core; `None` without a
    /// usable earlier sample.
    pub cpu_percent: Option<f64>,
    /// CPUs available to the container.
    pub online_cpus: u32,
    /// Memory in use, page cache excluded.
    pub memory_usage_bytes: u64,
    /// The memory limit, or the host's memory.
    pub memory_limit_bytes: u64,
    /// Bytes received, all interfaces.
    pub network_rx_bytes: u64,
    /// Bytes sent, all interfaces.
    pub network_tx_bytes: u64,
    /// Bytes read from block devices.
    pub block_read_bytes: u64,
    /// Bytes written to block devices.
    pub block_write_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// When the engine took the (later) sample.
    pub read_at: Option<SystemTime>,
}

impl ResourceUsage {
    /// Usage from `latest`, with CPU computed against `earlier` when given.
    #[must_use]
    pub fn from_samples(earlier: Option<&ContainerStatsResponse>, latest: &ContainerStatsResponse) -> Self {
        let (received_bytes, sent_bytes) = latest.networks.as_ref().map_or((0, 0), |networks| {
            networks.values().fold((0u64, 0u64), |(rx, tx), net| {
                (rx.saturating_add(net.rx_bytes.unwrap_or(0)), tx.saturating_add(net.tx_bytes.unwrap_or(0)))
            })
        });
        let (block_read_bytes, block_write_bytes) = latest.blkio_stats.as_ref().map_or((0, 0), block_io_bytes);
        let memory = latest.memory_stats.as_ref();
        Self {
            cpu_percent: earlier
                .and_then(|e| e.cpu_stats.as_ref())
                .zip(latest.cpu_stats.as_ref())
                .and_then(|(before, after)| cpu_percent(before, after)),
            online_cpus: latest.cpu_stats.as_ref().map_or(0, online_cpus),
            memory_usage_bytes: memory.map_or(0, memory_usage_without_cache),
            memory_limit_bytes: memory.and_then(|m| m.limit).unwrap_or(0),
            network_rx_bytes: received_bytes,
            network_tx_bytes: sent_bytes,
            block_read_bytes,
            block_write_bytes,
            pids: latest.pids_stats.as_ref().and_then(|p| p.current).unwrap_or(0),
            read_at: latest.read.as_deref().and_then(parse_engine_time),
        }
    }
}

/// CPUs the engine reports, or the per-CPU counters when it leaves it out.
fn online_cpus(cpu: &ContainerCpuStats) -> u32 {
    cpu.online_cpus.filter(|&n| n > 0).unwrap_or_else(|| {
        let per_cpu = cpu.cpu_usage.as_ref().and_then(|u| u.percpu_usage.as_ref()).map_or(0, Vec::len);
        u32::try_from(per_cpu).unwrap_or(u32::MAX)
    })
}

/// `docker stats`' formula: the container's share of all CPU time between
/// the samples, times the CPUs, in percent.
#[allow(clippy::cast_precision_loss)] // nanosecond counters; f64's 52 bits cover 52 days of deltas
fn cpu_percent(before: &ContainerCpuStats, after: &ContainerCpuStats) -> Option<f64> {
    let container_before = before.cpu_usage.as_ref()?.total_usage?;
    let container_after = after.cpu_usage.as_ref()?.total_usage?;
    let system_delta = after.system_cpu_usage?.checked_sub(before.system_cpu_usage?)?;
    if system_delta == 0 {
        return None;
    }
    let container_delta = container_after.saturating_sub(container_before);
    Some(container_delta as f64 / system_delta as f64 * f64::from(online_cpus(after)) * 100.0)
}

/// Usage minus the inactive page cache (cgroup v1 `total_inactive_file`,
/// v2 `inactive_file`), as the docker CLI reports it.
fn memory_usage_without_cache(memory: &ContainerMemoryStats) -> u64 {
    let usage = memory.usage.unwrap_or(0);
    let cache = memory
        .stats
        .as_ref()
        .and_then(|stats| stats.get("total_inactive_file").or_else(|| stats.get("inactive_file")).copied())
        .unwrap_or(0);
    if cache < usage { usage - cache } else { usage }
}

fn block_io_bytes(blkio: &ContainerBlkioStats) -> (u64, u64) {
    let mut read = 0u64;
    let mut written = 0u64;
    for entry in blkio.io_service_bytes_recursive.iter().flatten() {
        let value = entry.value.unwrap_or(0);
        match entry.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => read = read.saturating_add(value),
            Some("write") => written = written.saturating_add(value),
            _ => {}
        }
    }
    (read, written)
}

/// Parses the engine's RFC 3339 time; the zero time it sends for "never" is `None`.
pub(crate) fn parse_engine_time(text: &str) -> Option<SystemTime> {
    let timestamp = prost_types::Timestamp::from_str(text).ok()?;
    if timestamp.seconds <= 0 {
        return None;
    }
    SystemTime::try_from(timestamp).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerBlkioStatEntry, ContainerCpuUsage, ContainerNetworkStats, ContainerPidsStats};

    use super::*;

    fn cpu(total: u64, system: u64, cpus: u32) -> ContainerCpuStats {
        ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage { total_usage: Some(total), ..Default::default() }),
            system_cpu_usage: Some(system),
            online_cpus: Some(cpus),
            ..Default::default()
        }
    }

    fn sample(cpu_stats: ContainerCpuStats) -> ContainerStatsResponse {
        let blk =
            |op: &str, value| ContainerBlkioStatEntry { op: Some(op.into()), value: Some(value), ..Default::default() };
        let net = |rx, tx| ContainerNetworkStats { rx_bytes: Some(rx), tx_bytes: Some(tx), ..Default::default() };
        ContainerStatsResponse {
            read: Some("2026-11-23T10:00:00.5Z".into()),
            cpu_stats: Some(cpu_stats),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(10_000),
                limit: Some(1 << 30),
                stats: Some(HashMap::from([("total_inactive_file".to_owned(), 4_000)])),
                ..Default::default()
            }),
            networks: Some(HashMap::from([("eth0".to_owned(), net(100, 10)), ("eth1".to_owned(), net(1, 2))])),
            blkio_stats: Some(ContainerBlkioStats {
                io_service_bytes_recursive: Some(vec![
                    blk("Read", 512),
                    blk("Write", 64),
                    blk("read", 8),
                    blk("Total", 9),
                ]),
                ..Default::default()
            }),
            pids_stats: Some(ContainerPidsStats { current: Some(3), limit: None }),
            ..Default::default()
        }
    }

    #[test]
    fn usage_is_computed_as_docker_stats_does() {
        let earlier = sample(cpu(1_000_000, 10_000_000, 2));
        let latest = sample(cpu(1_500_000, 12_000_000, 2));
        let usage = ResourceUsage::from_samples(Some(&earlier), &latest);
        // 0.5 ms of 2 ms of all-CPU time on 2 CPUs = 50 %.
        assert_eq!(usage.cpu_percent, Some(50.0));
        assert_eq!(usage.online_cpus, 2);
        assert_eq!(usage.memory_usage_bytes, 6_000);
        assert_eq!(usage.memory_limit_bytes, 1 << 30);
        assert_eq!((usage.network_rx_bytes, usage.network_tx_bytes), (101, 12));
        assert_eq!((usage.block_read_bytes, usage.block_write_bytes), (520, 64));
        assert_eq!(usage.pids, 3);
        let read_at = usage.read_at.expect("read time");
        assert_eq!(read_at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis(), 1_795_428_000_500);
    }

    #[test]
    fn cpu_needs_two_usable_samples() {
        let latest = sample(cpu(1_500_000, 12_000_000, 2));
        assert_eq!(ResourceUsage::from_samples(None, &latest).cpu_percent, None);
        let same_time = sample(cpu(1_000_000, 12_000_000, 2));
        assert_eq!(ResourceUsage::from_samples(Some(&same_time), &latest).cpu_percent, None);
        let empty = ContainerStatsResponse::default();
        assert_eq!(ResourceUsage::from_samples(Some(&empty), &empty), ResourceUsage::default());
    }

    #[test]
    fn the_engine_zero_time_means_never() {
        assert_eq!(parse_engine_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_engine_time("not a time"), None);
        assert!(parse_engine_time("2026-11-23T10:00:00.123456789Z").is_some());
    }
}
