//! The engine's HTTP transport over its unix socket, keeping connections
//! alive. bollard's own unix transport turns hyper's pool off
//! (`pool_max_idle_per_host(0)`), so every engine call would open a new
//! socket and the engine a new connection handler; a batch of 20 stats
//! would cost 40 connections. Here one hyper-util client, shared by every
//! call, keeps idle connections for reuse.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::{BollardRequest, ClientVersion, Docker};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixStream;

/// Idle connections kept to the engine: enough for the largest batch
/// concurrency (`max_concurrent_cap` is at most 64) plus event streams.
const MAX_IDLE_CONNECTIONS: usize = 64;
/// How long an idle connection is kept before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A bollard client for the engine at `unix://<path>` whose connections are
/// pooled. `timeout_secs` bounds every request, as in bollard's own clients.
pub(crate) fn connect_unix_pooled(
    host: &str,
    timeout_secs: u64,
    version: &ClientVersion,
) -> Result<Docker, EngineError> {
    let socket: Arc<Path> = Arc::from(Path::new(host.trim_start_matches("unix://")));
    if !socket.exists() {
        return Err(EngineError::SocketNotFoundError(socket.display().to_string()));
    }
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let socket = socket.clone();
        // Boxed: hyper's connector bound wants an `Unpin` future.
        Box::pin(async move { UnixStream::connect(&*socket).await.map(TokioIo::new) })
    });
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(connector);
    // The URI's authority is never dialled (the connector ignores it); the
    // engine accepts any Host header on its socket.
    Docker::connect_with_custom_transport(
        move |request: BollardRequest| {
            let client = client.clone();
            async move { client.request(request).await.map_err(EngineError::from) }
        },
        Some("http://docker.sock"),
        timeout_secs,
        version,
    )
}
