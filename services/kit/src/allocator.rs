//! The process's allocator, jemalloc: its statistics, returning its unused
//! pages to the operating system, and heap profiles in pprof format. Plain
//! Rust; [`crate::introspection`] serves it over gRPC.
//!
//! The `mesh` binary installs `tikv_jemallocator::Jemalloc` as the global
//! allocator. A process that does not (a test binary, a tool) still links
//! jemalloc through this module, but allocates elsewhere: [`AllocatorStats::current`]
//! tells the two apart, so nobody reads jemalloc's near-empty figures as the
//! process's.

use std::sync::OnceLock;

use tikv_jemalloc_ctl::{Access, AsName, arenas, epoch, profiling, stats, thread};

/// Why the allocator could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    /// The process does not allocate through jemalloc.
    #[error("the process does not allocate through jemalloc")]
    NotJemalloc,
    /// A mallctl call failed.
    #[error("jemalloc refused `{name}`: {message}")]
    Mallctl { name: &'static str, message: String },
    /// Heap profiling is switched off by configuration.
    #[error("heap profiling is off; set MESH_SERVER_HEAP_PROFILING=true to enable it")]
    HeapProfilingDisabled,
    /// jemalloc was started without `prof:true`, which cannot be changed later.
    #[error("the process was started without jemalloc profiling (malloc_conf `prof:true`)")]
    HeapProfilingUnavailable,
    /// Writing or converting the profile failed.
    #[error("heap profile dump failed: {message}")]
    ProfileDump { message: String },
}

fn mallctl_error(name: &'static str) -> impl FnOnce(tikv_jemalloc_ctl::Error) -> AllocatorError {
    move |error| AllocatorError::Mallctl { name, message: error.to_string() }
}

/// jemalloc's figures, read after advancing its statistics epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes in live allocations.
    pub allocated_bytes: u64,
    /// Bytes in pages that hold live allocations.
    pub active_bytes: u64,
    /// Bytes of allocator pages resident in RAM, metadata included.
    pub resident_bytes: u64,
    /// Bytes of mapped extents in use.
    pub mapped_bytes: u64,
    /// Bytes of virtual memory kept for reuse, not resident.
    pub retained_bytes: u64,
}

impl AllocatorStats {
    /// Reads the figures; [`AllocatorError::NotJemalloc`] when the process
    /// allocates elsewhere.
    pub fn current() -> Result<Self, AllocatorError> {
        if !jemalloc_is_the_global_allocator() {
            return Err(AllocatorError::NotJemalloc);
        }
        // jemalloc caches its statistics; advancing the epoch refreshes them.
        epoch::advance().map_err(mallctl_error("epoch"))?;
        Ok(Self {
            allocated_bytes: stats::allocated::read().map_err(mallctl_error("stats.allocated"))? as u64,
            active_bytes: stats::active::read().map_err(mallctl_error("stats.active"))? as u64,
            resident_bytes: stats::resident::read().map_err(mallctl_error("stats.resident"))? as u64,
            mapped_bytes: stats::mapped::read().map_err(mallctl_error("stats.mapped"))? as u64,
            retained_bytes: stats::retained::read().map_err(mallctl_error("stats.retained"))? as u64,
        })
    }
}

/// Whether Rust allocations go through jemalloc, found once by allocating
/// through the global allocator and watching jemalloc's per-thread counter,
/// which no other thread can move.
#[must_use]
pub fn jemalloc_is_the_global_allocator() -> bool {
    static IS_JEMALLOC: OnceLock<bool> = OnceLock::new();
    *IS_JEMALLOC.get_or_init(|| {
        const PROBE_BYTES: usize = 64 * 1024;
        let Ok(allocated_by_this_thread) = thread::allocatedp::read() else {
            return false;
        };
        let before = allocated_by_this_thread.get();
        let probe: Vec<u8> = std::hint::black_box(Vec::with_capacity(PROBE_BYTES));
        let after = allocated_by_this_thread.get();
        drop(probe);
        after.saturating_sub(before) >= PROBE_BYTES as u64
    })
}

/// Returns every arena's unused dirty and muzzy pages to the operating system.
///
/// jemalloc's `arena.<MALLCTL_ARENAS_ALL>.purge` takes no argument, which the
/// safe `tikv-jemalloc-ctl` API cannot express (and this crate forbids
/// unsafe code). Setting an arena's decay time to 0 purges the same pages at
/// once (jemalloc's `pac_decay_ms_set`), so each arena's decay times are set
/// to 0 and put back.
pub fn purge() -> Result<(), AllocatorError> {
    if !jemalloc_is_the_global_allocator() {
        return Err(AllocatorError::NotJemalloc);
    }
    let arena_count = arenas::narenas::read().map_err(mallctl_error("arenas.narenas"))?;
    for arena in 0..arena_count {
        for decay in ["dirty_decay_ms", "muzzy_decay_ms"] {
            let name = format!("arena.{arena}.{decay}\0").into_bytes();
            let name = name.as_slice().name();
            // Arenas that were never initialised have no pages to purge and
            // refuse the read; skip them.
            let Ok(previous): Result<isize, _> = name.read() else {
                continue;
            };
            name.write(0_isize).map_err(mallctl_error("arena.<i>.decay_ms"))?;
            name.write(previous).map_err(mallctl_error("arena.<i>.decay_ms"))?;
        }
    }
    Ok(())
}

/// A heap profile of live allocations.
#[derive(Clone, Debug)]
pub struct HeapProfile {
    /// A gzip-compressed pprof `Profile`.
    pub pprof_gzip: Vec<u8>,
    /// Average bytes between two samples.
    pub sample_interval_bytes: u64,
}

/// Starts sampling allocations for heap profiles. Needs a process started
/// with `prof:true` (profiling can be compiled in but inactive at start:
/// `prof_active:false` costs almost nothing until this call).
pub async fn activate_heap_profiling() -> Result<(), AllocatorError> {
    if !heap_profiling_available() {
        return Err(AllocatorError::HeapProfilingUnavailable);
    }
    jemalloc_pprof::activate_jemalloc_profiling().await;
    Ok(())
}

/// Whether jemalloc was started with profiling (`opt.prof`).
#[must_use]
pub fn heap_profiling_available() -> bool {
    jemalloc_is_the_global_allocator() && profiling::prof::read().unwrap_or(false)
}

/// Dumps a heap profile. Blocking (jemalloc writes the profile to a file,
/// which is then parsed and symbol addresses mapped): call it from
/// `spawn_blocking`.
pub fn dump_heap_profile() -> Result<HeapProfile, AllocatorError> {
    if !heap_profiling_available() {
        return Err(AllocatorError::HeapProfilingUnavailable);
    }
    let Some(profiler) = jemalloc_pprof::PROF_CTL.as_ref() else {
        return Err(AllocatorError::HeapProfilingUnavailable);
    };
    let mut profiler = profiler.blocking_lock();
    let sample_interval_bytes = 1_u64 << profiler.lg_sample();
    let pprof_gzip =
        profiler.dump_pprof().map_err(|error| AllocatorError::ProfileDump { message: format!("{error:#}") })?;
    Ok(HeapProfile { pprof_gzip, sample_interval_bytes })
}
