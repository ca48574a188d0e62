//! The `MemoryProfiler` service: snapshots of every watched mesh service's
//! memory (polled through the `MemoryIntrospection` that `mesh-kit` adds to
//! every server), leak detection by trend, top consumers, recommendations
//! and memory-based health. Server setup, config loading and telemetry live
//! in `mesh-kit`.
//!
//! # Layout
//! - [`trend`]: least-squares fit and the rules that call a trend a leak; pure.
//! - [`snapshot`]: [`Snapshot`] and [`SnapshotHistory`], the kept snapshots.
//! - [`leak`]: leaks over time and the alerts they raise.
//! - [`report`]: health, top consumers and recommendations; pure.
//! - [`heap`]: top frames of a pprof heap profile; pure.
//! - [`profiler`]: [`Profiler`], the schedule and the state behind every RPC.
//! - [`collector`]: probes the targets (outbound gRPC).
//! - [`target`], [`config`]: [`MemoryProfilerConfig`] and its target list.
//! - [`error`]: every failure of a call, as [`MemoryProfilerError`].
//! - [`grpc`]: [`MemoryProfilerGrpc`], the `mesh.memory.v1.MemoryProfiler` adapter.

#![forbid(unsafe_code)]

pub mod collector;
pub mod config;
pub mod error;
pub mod grpc;
pub mod heap;
pub mod leak;
pub mod profiler;
pub mod report;
pub mod snapshot;
pub mod target;
pub mod trend;

use std::sync::Arc;

pub use config::MemoryProfilerConfig;
pub use error::MemoryProfilerError;
pub use grpc::MemoryProfilerGrpc;
use mesh_kit::{ConfigError, MeshServer, Runtime, ServeError};
use mesh_proto::memory::v1::PROFILER_FILE_DESCRIPTOR_SET;
use mesh_proto::memory::v1::memory_profiler_server::MemoryProfilerServer;
pub use profiler::Profiler;
pub use snapshot::{Snapshot, SnapshotHistory};
use tracing::{info, warn};

use crate::collector::Collector;

/// Runs the `MemoryProfiler` until `rt.shutdown` is cancelled. Its settings
/// are read once (`MESH_MEMORY_*`); changing them needs a restart.
pub async fn run(rt: Runtime) -> Result<(), ServeError> {
    let config: MemoryProfilerConfig = mesh_kit::config::load(&rt.config_source)?;
    let targets = config.parsed_targets();
    if targets.is_empty() {
        warn!("no memory targets; set MESH_MEMORY_TARGETS to name=http://host:port,...");
    }
    let collector = Collector::new(&targets, config.effective_probe_timeout())
        .map_err(|error| ConfigError::Invalid { problems: vec![format!("MESH_MEMORY_TARGETS: {error}")] })?;
    info!(
        targets = targets.len(),
        snapshot_interval = ?config.snapshot_interval,
        max_snapshots = config.max_snapshots,
        "memory profiler ready"
    );
    let profiler = Arc::new(Profiler::new(config, collector));
    let schedule = {
        let profiler = profiler.clone();
        let shutdown = rt.shutdown.clone();
        async move { profiler.run_schedule(shutdown).await }
    };
    tokio::spawn(schedule);

    let server = MeshServer::new(rt.server_settings);
    let max_message_bytes = server.settings().max_message_bytes;
    let service =
        MemoryProfilerServer::new(MemoryProfilerGrpc::new(profiler)).max_encoding_message_size(max_message_bytes);
    server.add_service(service, PROFILER_FILE_DESCRIPTOR_SET).serve(rt.listener, rt.shutdown).await
}
