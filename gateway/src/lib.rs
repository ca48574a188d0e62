//! The mesh edge gateway: one listener in front of every mesh service. A call
//! to `/<package>.<Service>/<Method>` is authenticated, rate limited, given a
//! deadline, and forwarded as a transparent HTTP/2 stream to one endpoint of
//! that service, picked by load; `grpc.health.v1` and reflection are answered
//! here, aggregated over the upstreams, so a client needs only the gateway's
//! address. Each concern is one tower layer; `stack` holds their order.
//! Correlation ids, spans, the error model and configuration loading come
//! from `mesh-kit`; the `mesh` binary binds the ports and loads
//! [`GatewayConfig`].
//!
//! # Layout
//! - [`serve`], [`run`] (here): the accept loop and the graceful drain.
//! - `connection` (with `tls`, `peer`): one caller connection: TLS or mutual TLS, the idle timeout.
//! - `stack`: the layer order of both stacks, and the HTTP/2 server settings.
//! - `authn`, `rate_limit`, `load_shed`, `deadline`: refusals and limits, one layer each.
//! - `access_log` (with `access_sink`), `metrics` (with `observe`): one line and the series of every call; `admin` serves `/metrics`.
//! - `message_limit`: the size limit of every gRPC message, read from its length prefix.
//! - `rescue`: the one place a layer's typed error becomes a gRPC status.
//! - `route`: picks a call's destination from its path.
//! - `retry` (with `request_body`), `balance`, `proxy`: replay, endpoint choice, HTTP/2 passthrough.
//! - `reload`: the live settings and how a reloaded config reaches them; `dns`: re-resolution of upstream names.
//! - `health`: `grpc.health.v1.Health`, aggregated over the upstreams; [`GATEWAY_HEALTH_SERVICE`] is the gateway's own.
//! - `config`: [`GatewayConfig`], its documented settings, validation and the route table.
//! - `error`: [`GatewayError`], and the error of a refused health check.

#![forbid(unsafe_code)]

mod access_log;
mod access_sink;
mod admin;
mod authn;
mod balance;
mod config;
mod connection;
mod deadline;
mod dns;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod load_shed;
mod message_limit;
mod metrics;
mod observe;
mod peer;
mod proxy;
mod rate_limit;
mod refusal;
mod reload;
mod request_body;
mod rescue;
mod retry;
mod route;
mod stack;
mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use mesh_kit::{CancellationToken, ConfigWatch, ServiceConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic_health::pb::health_server::HealthServer;
use tower::util::BoxCloneSyncService;
use tracing::{debug, error, info, warn};

pub use config::{ClientCertificateConfig, GatewayConfig, RouteConfig, TokenConfig};
pub use dns::{Resolve, ResolveFuture, SystemResolver};
pub use error::GatewayError;
pub use health::GATEWAY_HEALTH_SERVICE;

use crate::connection::ListenerSettings;
use crate::health::{GatewayHealth, UpstreamHealth};
use crate::metrics::GatewayMetrics;
use crate::reload::LiveSettings;
use crate::route::{LocalServices, Router, UpstreamRoute};

/// How long to pause accepting after an error that is not about one
/// connection (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What [`run`] needs: the bound listeners, the live settings, when to stop.
#[derive(Debug)]
pub struct GatewayRuntime {
    /// Where callers connect (gRPC, h2c). Binding is the caller's job so tests can use port 0.
    pub listener: TcpListener,
    /// Where Prometheus scrapes `/metrics` (HTTP/1.1); `None` serves no metrics.
    pub admin_listener: Option<TcpListener>,
    /// The settings and their reloads, e.g. from `mesh_kit::config::load_and_watch`.
    pub config: ConfigWatch<GatewayConfig>,
    /// Cancelled to drain and stop.
    pub shutdown: CancellationToken,
}

/// Serves the gateway on `listener` with settings that never change and no
/// admin port; see [`run`].
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let (_config_sender, config) = tokio::sync::watch::channel(Arc::new(config));
    run(GatewayRuntime { listener, admin_listener: None, config, shutdown }).await
}

/// Serves the gateway until `shutdown` is cancelled, then stops accepting,
/// asks every caller connection to finish (HTTP/2 GOAWAY), and waits up to
/// `shutdown_grace` for calls in flight before cutting the connections that
/// remain. Each accepted change of `config` applies to the next call.
/// Upstream host names are resolved by the system resolver.
pub async fn run(runtime: GatewayRuntime) -> Result<(), GatewayError> {
    run_with_resolver(runtime, Arc::new(SystemResolver)).await
}

/// As [`run`], resolving upstream host names with `resolver`.
pub async fn run_with_resolver(runtime: GatewayRuntime, resolver: Arc<dyn Resolve>) -> Result<(), GatewayError> {
    let GatewayRuntime { listener, admin_listener, config: config_watch, shutdown } = runtime;
    let config = GatewayConfig::clone(&config_watch.borrow());
    let problems = config.validate();
    if !problems.is_empty() {
        let problems = problems.into_iter().map(|problem| format!("{}: {}", problem.field, problem.message)).collect();
        return Err(mesh_kit::ConfigError::Invalid { problems }.into());
    }
    let local_addr = listener.local_addr()?;
    let settings = Arc::new(LiveSettings::new(&config)?);
    let known_services = config
        .service_routes()
        .iter()
        .map(|route| route.service_name.to_owned())
        .chain(GatewayConfig::default().public_services)
        .collect::<Vec<_>>();
    let metrics = GatewayMetrics::new(known_services);
    let (router, probe_endpoints) = build_router(&config, &settings, &metrics, shutdown.clone())?;
    let upstream_services = router.upstream_services();
    // Written by its own thread; closed last, so the lines of calls cut by the drain are written too.
    let access_sink = access_sink::AccessLogSink::stdout();
    let caller_stack = stack::caller_stack(router, &settings, &metrics, &access_sink);
    let tls = tls::acceptor(&config)
        .map_err(|(field, error)| mesh_kit::ConfigError::Invalid { problems: vec![format!("{field}: {error}")] })?;
    let is_tls = tls.is_some();
    let listener_settings = Arc::new(ListenerSettings {
        http2: stack::http2_server(&config),
        tls,
        tls_handshake_timeout: config.tls_handshake_timeout,
        idle_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
    });

    let mut background = JoinSet::new();
    background.spawn(reload::follow(Arc::clone(&settings), config_watch, shutdown.clone()));
    background.spawn(dns::follow(Arc::clone(&settings), resolver, shutdown.clone()));
    background.spawn(probe_endpoints);
    if let Some(admin_listener) = admin_listener {
        background.spawn(admin::serve_admin(
            admin_listener,
            Arc::clone(&metrics),
            Arc::clone(&settings),
            shutdown.clone(),
        ));
    }

    // Every caller connection runs in its own task; the set lets the drain cut the ones outliving the grace period.
    let mut connections = JoinSet::new();
    info!(%local_addr, services = ?upstream_services, tls = is_tls, "gateway serving");
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
        // Each connection sees `shutdown` itself and closes with GOAWAY, letting its calls in flight finish.
        connections.spawn(connection::serve_connection(
            stream,
            remote_addr,
            caller_stack.clone(),
            Arc::clone(&listener_settings),
            shutdown.clone(),
        ));
    }

    drop(listener);
    info!(%local_addr, in_flight_connections = connections.len(), "gateway draining");
    let drained = async { while connections.join_next().await.is_some() {} };
    tokio::select! {
        () = drained => info!(%local_addr, "gateway drained"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            warn!(%local_addr, grace = ?config.shutdown_grace, "calls in flight outlived the shutdown grace period; cutting them");
        }
    }
    connections.shutdown().await;
    background.shutdown().await;
    access_sink.close();
    info!(%local_addr, "gateway stopped");
    Ok(())
}

/// The router over the upstream stacks of `settings`, with health over
/// their endpoints (as reload and re-resolution change them) and reflection
/// over their services; and the task that probes those endpoints' health.
fn build_router(
    config: &GatewayConfig,
    settings: &LiveSettings,
    metrics: &GatewayMetrics,
    shutdown: CancellationToken,
) -> Result<(Router, impl Future<Output = ()> + Send + 'static), GatewayError> {
    let mut upstreams = Vec::new();
    let mut upstream_healths = Vec::new();
    let mut descriptor_sets = Vec::new();
    let routes = config.service_routes();
    for upstream in &settings.upstreams {
        let route = routes.iter().find(|route| route.service_name == upstream.service_name).expect("routed at start");
        upstreams.push(UpstreamRoute {
            service_name: upstream.service_name,
            service: stack::upstream_service(upstream, metrics),
        });
        upstream_healths.push(UpstreamHealth::new(
            upstream.service_name,
            Arc::clone(&upstream.endpoints),
            config.upstream_connect_timeout,
        ));
        descriptor_sets.push(route.descriptor_set);
    }
    let health =
        GatewayHealth::new(upstream_healths, config.health_check_timeout, config.health_poll_interval, shutdown);
    let probe_endpoints = health.probe_endpoints();
    let (reflection_v1, reflection_v1alpha) = mesh_kit::server::reflection_services(&descriptor_sets)?;
    let local = LocalServices {
        health: BoxCloneSyncService::new(HealthServer::new(health)),
        reflection_v1: BoxCloneSyncService::new(reflection_v1),
        reflection_v1alpha: BoxCloneSyncService::new(reflection_v1alpha),
    };
    Ok((Router::new(upstreams, local), probe_endpoints))
}

/// Errors about one incoming connection, which leave the listener usable.
fn is_per_connection_error(accept_error: &io::Error) -> bool {
    matches!(
        accept_error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
