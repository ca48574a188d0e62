//! `mesh.memory.v1.MemoryIntrospection`, which [`crate::MeshServer`] adds to
//! every server: the process's memory from `/proc`, the allocator's figures,
//! the gauges the service registered in its [`MemoryGauges`], heap profiles
//! and purging. The `MemoryProfiler` polls it; operators can call it with grpcurl.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use mesh_proto::memory::v1 as pb;
use mesh_proto::memory::v1::memory_introspection_server::MemoryIntrospection;
use tonic::{Code, Request, Response, Status};
use tracing::{info, instrument};

use crate::allocator::{self, AllocatorError, AllocatorStats};
use crate::error::{RpcError, to_status};
use crate::memory::MemoryStats;

/// Reads one gauge: a size the service keeps for one of its parts.
pub type MemoryGauge = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The gauges a service registers for its own parts (cache bytes, open
/// connections...), read on every `GetMemoryStats`. Cloning shares the
/// registry, so a service can keep a handle and register parts it creates later.
#[derive(Clone, Default)]
pub struct MemoryGauges {
    // A std lock: it is held only to clone the map's entries or insert one,
    // never across an await or a gauge call.
    gauges: Arc<RwLock<BTreeMap<String, MemoryGauge>>>,
}

impl MemoryGauges {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `gauge` under `name`, replacing a gauge of the same name.
    /// Names are reported as given; end them in `_bytes` when they count bytes.
    pub fn register(&self, name: impl Into<String>, gauge: MemoryGauge) {
        self.gauges.write().unwrap_or_else(PoisonError::into_inner).insert(name.into(), gauge);
    }

    /// Removes the gauge called `name`; whether there was one.
    pub fn unregister(&self, name: &str) -> bool {
        self.gauges.write().unwrap_or_else(PoisonError::into_inner).remove(name).is_some()
    }

    /// Reads every gauge, by name order.
    #[must_use]
    pub fn read_all(&self) -> Vec<(String, u64)> {
        let gauges: Vec<(String, MemoryGauge)> = self
            .gauges
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, gauge)| (name.clone(), gauge.clone()))
            .collect();
        // Gauges run outside the lock: one may take its own locks.
        gauges.into_iter().map(|(name, gauge)| (name, gauge())).collect()
    }
}

impl fmt::Debug for MemoryGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gauges = self.gauges.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("MemoryGauges").field("names", &gauges.keys().collect::<Vec<_>>()).finish()
    }
}

/// The process's memory, from `/proc` and the cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessMemory {
    /// When the figures were read.
    pub read_time: SystemTime,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Proportional set size, in bytes, where `/proc/self/smaps_rollup` is readable.
    pub proportional_bytes: Option<u64>,
    /// Virtual address space, in bytes.
    pub virtual_bytes: u64,
    /// The cgroup's `memory.max`, else the machine's RAM; 0 when unknown.
    pub limit_bytes: u64,
}

impl ProcessMemory {
    /// Reads the figures; blocking file reads, a few hundred microseconds.
    #[must_use]
    pub fn current() -> Self {
        let statm = MemoryStats::current().unwrap_or_default();
        Self {
            read_time: SystemTime::now(),
            resident_bytes: statm.resident_bytes,
            proportional_bytes: std::fs::read_to_string("/proc/self/smaps_rollup")
                .ok()
                .and_then(|rollup| parse_kib_field(&rollup, "Pss:")),
            virtual_bytes: statm.virtual_bytes,
            limit_bytes: memory_limit_bytes().unwrap_or(0),
        }
    }
}

/// Reads a `Name:   1234 kB` line of a `/proc` file, in bytes.
fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line[field.len()..].split_ascii_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The cgroup v2 `memory.max`, else cgroup v1's limit, else `MemTotal`.
fn memory_limit_bytes() -> Option<u64> {
    // cgroup v1 reports "no limit" as a number near u64::MAX; a limit above
    // the machine's RAM means the same.
    let machine_bytes =
        std::fs::read_to_string("/proc/meminfo").ok().and_then(|meminfo| parse_kib_field(&meminfo, "MemTotal:"));
    let cgroup_bytes = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok());
    match (cgroup_bytes, machine_bytes) {
        (Some(cgroup), Some(machine)) => Some(cgroup.min(machine)),
        (cgroup, machine) => cgroup.or(machine),
    }
}

/// Why an introspection call failed.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    /// The allocator could not answer.
    #[error(transparent)]
    Allocator(#[from] AllocatorError),
    /// The blocking task that read the figures panicked.
    #[error("the memory reader task failed: {message}")]
    ReaderFailed { message: String },
}

impl RpcError for IntrospectionError {
    fn code(&self) -> Code {
        match self {
            Self::Allocator(
                AllocatorError::NotJemalloc
                | AllocatorError::HeapProfilingDisabled
                | AllocatorError::HeapProfilingUnavailable,
            ) => Code::FailedPrecondition,
            Self::Allocator(AllocatorError::Mallctl { .. } | AllocatorError::ProfileDump { .. })
            | Self::ReaderFailed { .. } => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Allocator(AllocatorError::NotJemalloc) => "ALLOCATOR_NOT_JEMALLOC",
            Self::Allocator(AllocatorError::HeapProfilingDisabled) => "HEAP_PROFILING_DISABLED",
            Self::Allocator(AllocatorError::HeapProfilingUnavailable) => "HEAP_PROFILING_UNAVAILABLE",
            Self::Allocator(AllocatorError::Mallctl { .. }) => "ALLOCATOR_CONTROL_FAILED",
            Self::Allocator(AllocatorError::ProfileDump { .. }) => "HEAP_PROFILE_FAILED",
            Self::ReaderFailed { .. } => "INTERNAL",
        }
    }

    fn domain(&self) -> &'static str {
        "mesh.memory.v1"
    }
}

/// The gRPC face of a process's memory.
#[derive(Clone, Debug)]
pub struct MemoryIntrospectionGrpc {
    gauges: MemoryGauges,
    heap_profiling: bool,
}

impl MemoryIntrospectionGrpc {
    /// Serves `gauges`; `heap_profiling` is `MESH_SERVER_HEAP_PROFILING`.
    #[must_use]
    pub fn new(gauges: MemoryGauges, heap_profiling: bool) -> Self {
        Self { gauges, heap_profiling }
    }
}

async fn blocking<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> Result<T, IntrospectionError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|error| IntrospectionError::ReaderFailed { message: error.to_string() })
}

fn status(error: &IntrospectionError) -> Status {
    to_status(error)
}

fn process_to_wire(process: &ProcessMemory) -> pb::ProcessMemory {
    pb::ProcessMemory {
        read_time: Some(process.read_time.into()),
        resident_bytes: process.resident_bytes,
        proportional_bytes: process.proportional_bytes,
        virtual_bytes: process.virtual_bytes,
        limit_bytes: process.limit_bytes,
    }
}

fn allocator_to_wire(stats: &AllocatorStats) -> pb::AllocatorMemory {
    pb::AllocatorMemory {
        allocated_bytes: stats.allocated_bytes,
        active_bytes: stats.active_bytes,
        resident_bytes: stats.resident_bytes,
        mapped_bytes: stats.mapped_bytes,
        retained_bytes: stats.retained_bytes,
    }
}

#[tonic::async_trait]
impl MemoryIntrospection for MemoryIntrospectionGrpc {
    #[instrument(skip_all)]
    async fn get_memory_stats(
        &self,
        _request: Request<pb::GetMemoryStatsRequest>,
    ) -> Result<Response<pb::GetMemoryStatsResponse>, Status> {
        let gauges = self.gauges.clone();
        // `/proc/self/smaps_rollup` walks every mapping of the process: keep it off the async workers.
        let (process, allocator, gauges) = blocking(move || {
            let process = ProcessMemory::current();
            let allocator = AllocatorStats::current();
            (process, allocator, gauges.read_all())
        })
        .await
        .map_err(|e| status(&e))?;
        let allocator = match allocator {
            Ok(stats) => Some(allocator_to_wire(&stats)),
            Err(AllocatorError::NotJemalloc) => None,
            Err(error) => return Err(status(&error.into())),
        };
        Ok(Response::new(pb::GetMemoryStatsResponse {
            process: Some(process_to_wire(&process)),
            allocator,
            gauges: gauges.into_iter().map(|(name, value)| pb::MemoryGauge { name, value }).collect(),
        }))
    }

    #[instrument(skip_all)]
    async fn heap_profile(
        &self,
        _request: Request<pb::HeapProfileRequest>,
    ) -> Result<Response<pb::HeapProfileResponse>, Status> {
        if !self.heap_profiling {
            return Err(status(&AllocatorError::HeapProfilingDisabled.into()));
        }
        let profile_time = SystemTime::now();
        let profile =
            blocking(allocator::dump_heap_profile).await.map_err(|e| status(&e))?.map_err(|e| status(&e.into()))?;
        info!(pprof_bytes = profile.pprof_gzip.len(), "heap profile taken");
        Ok(Response::new(pb::HeapProfileResponse {
            pprof_gzip: profile.pprof_gzip,
            profile_time: Some(profile_time.into()),
            sample_interval_bytes: profile.sample_interval_bytes,
        }))
    }

    #[instrument(skip_all)]
    async fn purge(&self, _request: Request<pb::PurgeRequest>) -> Result<Response<pb::PurgeResponse>, Status> {
        let outcome = blocking(|| -> Result<pb::PurgeResponse, AllocatorError> {
            let process_before = ProcessMemory::current();
            let allocator_before = AllocatorStats::current()?;
            allocator::purge()?;
            let allocator_after = AllocatorStats::current()?;
            let process_after = ProcessMemory::current();
            Ok(pb::PurgeResponse {
                allocator_resident_before_bytes: allocator_before.resident_bytes,
                allocator_resident_after_bytes: allocator_after.resident_bytes,
                process_resident_before_bytes: process_before.resident_bytes,
                process_resident_after_bytes: process_after.resident_bytes,
            })
        })
        .await
        .map_err(|e| status(&e))?
        .map_err(|e| status(&e.into()))?;
        info!(
            released_bytes = outcome.process_resident_before_bytes.saturating_sub(outcome.process_resident_after_bytes),
            "allocator purged"
        );
        Ok(Response::new(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_fields_are_read_in_bytes() {
        let rollup =
            "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:                1024 kB\nPss:                 512 kB\n";
        assert_eq!(parse_kib_field(rollup, "Pss:"), Some(512 * 1024));
        assert_eq!(parse_kib_field(rollup, "Swap:"), None);
        assert_eq!(parse_kib_field("Pss: lots kB", "Pss:"), None);
    }

    #[test]
    fn gauges_are_read_in_name_order_and_replaced_by_name() {
        let gauges = MemoryGauges::new();
        gauges.register("open_connections", Arc::new(|| 3));
        gauges.register("cache_bytes", Arc::new(|| 10));
        gauges.register("cache_bytes", Arc::new(|| 20));
        assert_eq!(gauges.read_all(), vec![("cache_bytes".to_owned(), 20), ("open_connections".to_owned(), 3)]);
        assert!(gauges.unregister("cache_bytes"));
        assert!(!gauges.unregister("cache_bytes"));
        assert_eq!(format!("{gauges:?}"), r#"MemoryGauges { names: ["open_connections"] }"#);
    }

    #[test]
    fn this_process_reports_its_memory_and_a_limit() {
        let process = ProcessMemory::current();
        assert!(process.resident_bytes > 0);
        assert!(process.limit_bytes > 0, "cgroup or /proc/meminfo is readable on linux");
    }
}
