//! What the profiler's integration tests share: jemalloc as this test
//! binary's allocator (with profiling compiled in and started inactive, as
//! the `mesh` binary does), test services on real `MeshServer`s, and a
//! profiler on port 0.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of this module

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh_kit::{CancellationToken, ConfigSource, MeshServer, Runtime, ServerSettings};
use mesh_proto::memory::v1::memory_introspection_client::MemoryIntrospectionClient;
use mesh_proto::memory::v1::memory_profiler_client::MemoryProfilerClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// SAFETY: jemalloc reads this NUL-terminated string once, at its first
// allocation; nothing writes it. `prof:true` compiles sampling in,
// `prof_active:false` leaves it off until a server with heap profiling
// switches it on.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"prof:true,prof_active:false,lg_prof_sample:19\0";

/// A running server; dropping it stops the server.
pub struct RunningServer {
    pub uri: String,
    shutdown: CancellationToken,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let uri = format!("http://{}", listener.local_addr().expect("local addr"));
    (listener, uri)
}

/// Serves a `MeshServer` with no service of its own: the kit adds health,
/// reflection and `MemoryIntrospection`.
pub async fn start_mesh_server(server: MeshServer) -> RunningServer {
    let (listener, uri) = bind().await;
    let shutdown = CancellationToken::new();
    let serve_shutdown = shutdown.clone();
    tokio::spawn(async move { server.serve(listener, serve_shutdown).await.expect("test server serves") });
    RunningServer { uri, shutdown }
}

/// Memory a test service holds on purpose, reported as a gauge.
#[derive(Clone, Default)]
pub struct HeldMemory {
    blocks: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl HeldMemory {
    pub fn bytes(&self) -> u64 {
        let blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
        blocks.iter().map(|block| block.len() as u64).sum()
    }

    /// Holds `bytes` more, touched so they are resident.
    pub fn hold(&self, bytes: usize) {
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner).push(vec![0xA5; bytes]);
    }

    pub fn release_all(&self) {
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// A test service whose memory follows `step(tick, held)` once a second,
/// with its held bytes registered as the gauge `gauge_name`.
pub async fn start_test_service(gauge_name: &str, step: impl Fn(u64, &HeldMemory) + Send + 'static) -> RunningServer {
    let held = HeldMemory::default();
    let gauge_held = held.clone();
    let server =
        MeshServer::new(ServerSettings::default()).with_memory_gauge(gauge_name, Arc::new(move || gauge_held.bytes()));
    let running = start_mesh_server(server).await;
    let shutdown = running.shutdown.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        for tick in 0.. {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => step(tick, &held),
            }
        }
    });
    running
}

/// Starts the profiler with `MESH_MEMORY_*` settings.
pub async fn start_profiler(settings: &[(&str, String)]) -> (RunningServer, MemoryProfilerClient<Channel>) {
    let (listener, uri) = bind().await;
    let config_source = settings.iter().fold(ConfigSource::default(), |source, (name, value)| {
        source.with_var(format!("MESH_MEMORY_{name}"), value.clone())
    });
    let shutdown = CancellationToken::new();
    let runtime =
        Runtime { listener, server_settings: ServerSettings::default(), config_source, shutdown: shutdown.clone() };
    tokio::spawn(async move { mesh_memory::run(runtime).await.expect("profiler serves") });
    let client = MemoryProfilerClient::connect(uri.clone()).await.expect("connect to the profiler");
    (RunningServer { uri, shutdown }, client)
}

pub async fn introspection_client(uri: &str) -> MemoryIntrospectionClient<Channel> {
    MemoryIntrospectionClient::connect(uri.to_owned()).await.expect("connect to the test service")
}

/// The settings the leak and sawtooth tests share: a snapshot a second, a
/// 10-snapshot window, and a 2 MiB threshold.
pub fn one_second_settings(targets: String) -> Vec<(&'static str, String)> {
    vec![
        ("TARGETS", targets),
        ("SNAPSHOT_INTERVAL", "1".to_owned()),
        ("LEAK_WINDOW", "10".to_owned()),
        ("LEAK_THRESHOLD_MB", "2".to_owned()),
    ]
}
