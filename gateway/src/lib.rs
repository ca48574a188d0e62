//! The mesh edge gateway: one listener in front of every mesh service. A call
//! to `/<package>.<Service>/<Method>` is forwarded as a transparent HTTP/2
//! stream to the upstream configured for that service; `grpc.health.v1` and
//! reflection are answered here, aggregated over the upstreams, so a client
//! needs only the gateway's address. Correlation ids, spans, the error model
//! and configuration loading come from `mesh-kit`; the `mesh` binary binds the
//! port and loads [`GatewayConfig`].
//!
//! # Layout
//! - [`serve`] (here): the accept loop and the graceful drain.
//! - `stack`: the tower stack, outermost layer first, and the HTTP/2 server settings.
//! - `route`: picks a call's destination from its path.
//! - `proxy`: forwards a call over a small pool of HTTP/2 connections per upstream.
//! - `health`: `grpc.health.v1.Health`, aggregated over the upstreams.
//! - `config`: [`GatewayConfig`], its documented settings, validation and the route table.
//! - `error`: [`GatewayError`], and the error of a refused health check.

#![forbid(unsafe_code)]

mod config;
mod error;
mod health;
mod proxy;
mod route;
mod stack;

use std::io;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use mesh_kit::{CancellationToken, ServiceConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

pub use config::GatewayConfig;
pub use error::GatewayError;

/// How long to pause accepting after an error that is not about one
/// connection (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the gateway on `listener` until `shutdown` is cancelled, then stops
/// accepting, asks every caller connection to finish (HTTP/2 GOAWAY), and
/// waits up to `config.shutdown_grace` for calls in flight before cutting the
/// connections that remain. The caller binds the listener, so tests can use
/// port 0.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let problems = config.validate();
    if !problems.is_empty() {
        let problems = problems.into_iter().map(|problem| format!("{}: {}", problem.field, problem.message)).collect();
        return Err(mesh_kit::ConfigError::Invalid { problems }.into());
    }
    let local_addr = listener.local_addr()?;
    let router = route::Router::new(&config, shutdown.clone())?;
    let upstream_services = router.upstream_services();
    let gateway_service = stack::gateway_service(router);
    let http2_server = stack::http2_server(&config);

    let graceful = GracefulShutdown::new();
    // Every caller connection runs in its own task; the set lets the drain cut the ones outliving the grace period.
    let mut connections = JoinSet::new();
    info!(%local_addr, services = ?upstream_services, "gateway serving");
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(join_error) = finished && join_error.is_panic() {
                    error!(%join_error, "caller connection task panicked");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, remote_addr) = match accepted {
            Ok(pair) => pair,
            Err(accept_error) if is_per_connection_error(&accept_error) => {
                debug!(%accept_error, "connection failed before it was accepted");
                continue;
            }
            Err(accept_error) => {
                warn!(%accept_error, "cannot accept connections; pausing");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        // gRPC messages are small; without NODELAY a response can wait for Nagle's timer.
        if let Err(nodelay_error) = stream.set_nodelay(true) {
            debug!(%remote_addr, %nodelay_error, "cannot set TCP_NODELAY");
        }
        let connection = http2_server.serve_connection(TokioIo::new(stream), gateway_service.clone());
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(connection_error) = connection.await {
                debug!(%remote_addr, %connection_error, "caller connection ended with an error");
            }
        });
    }

    drop(listener);
    info!(%local_addr, in_flight_connections = connections.len(), "gateway draining");
    tokio::select! {
        () = graceful.shutdown() => info!(%local_addr, "gateway drained"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            warn!(%local_addr, grace = ?config.shutdown_grace, "calls in flight outlived the shutdown grace period; cutting them");
        }
    }
    connections.shutdown().await;
    info!(%local_addr, "gateway stopped");
    Ok(())
}

/// Errors about one incoming connection, which leave the listener usable.
fn is_per_connection_error(accept_error: &io::Error) -> bool {
    matches!(
        accept_error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
