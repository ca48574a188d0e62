//! `grpc.health.v1.Health` for the mesh behind the gateway. `Check("")` is
//! SERVING only while every configured service has an endpoint answering
//! SERVING to its own `Check("")`; `Check("<service>")` asks that service's
//! endpoints, SERVING if any is (balancing avoids the others);
//! `Check("mesh.gateway")` ([`GATEWAY_HEALTH_SERVICE`]) is the gateway's own
//! status, which asks no upstream; any other name is `NOT_FOUND`. `Watch` re-checks every `health_poll_interval` and sends
//! a message when the status changes. While the gateway drains, everything
//! is `NOT_SERVING` and `Watch` streams end, so they do not hold up the drain.
//! The endpoints checked are those in balancing at the time of the check, so
//! endpoints added by a reload or by re-resolution are checked too.
//!
//! Besides answering callers, the checker probes every endpoint itself each
//! `health_poll_interval` ([`GatewayHealth::probe_endpoints`]) and ejects
//! from balancing, for `outlier_ejection_time`, one that does not answer
//! SERVING: an endpoint no call happens to pick (balancing prefers the
//! others) is still found out, whether it was configured at start or added
//! since.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::Stream;
use http::uri::Authority;
use mesh_kit::CancellationToken;
use mesh_kit::client::MeshChannel;
use tokio::time::MissedTickBehavior;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tracing::debug;

use crate::balance::{EndpointSet, Member};
use crate::error::HealthError;
use crate::reload::Live;

/// The health service name of the gateway itself, for liveness and readiness
/// probes: `SERVING` whenever the gateway answers at all (it serves only once
/// its settings are valid and its listener is bound), `NOT_SERVING` from the
/// start of its drain. It never asks an upstream: a probe on `Check("")`
/// would restart or unroute the whole edge whenever one service is down,
/// while the gateway itself can still answer that service's calls `UNAVAILABLE`.
pub const GATEWAY_HEALTH_SERVICE: &str = "mesh.gateway";

/// The health service; cheap to share, every call reads the same checker.
#[derive(Debug)]
pub(crate) struct GatewayHealth {
    checker: Arc<HealthChecker>,
}

/// One configured service and channels to its endpoints' health service.
#[derive(Debug)]
pub(crate) struct UpstreamHealth {
    /// The gRPC service name, as asked for in `Check`.
    service_name: &'static str,
    /// The endpoints in balancing, as reload and re-resolution change them.
    endpoints: Live<EndpointSet>,
    connect_timeout: Duration,
    /// Lazily connected channels by endpoint, separate from the proxy's
    /// connections so a check sees an endpoint as a new caller would; those
    /// of endpoints no longer in the set are dropped at the next check.
    clients: Mutex<HashMap<Authority, HealthClient<MeshChannel>>>,
}

impl UpstreamHealth {
    pub(crate) fn new(service_name: &'static str, endpoints: Live<EndpointSet>, connect_timeout: Duration) -> Self {
        Self { service_name, endpoints, connect_timeout, clients: Mutex::new(HashMap::new()) }
    }

    /// Each endpoint in balancing now with its client; `None` for an
    /// endpoint whose channel cannot be built (it counts as not serving).
    fn current_clients(&self) -> Vec<(Arc<Member>, Option<HealthClient<MeshChannel>>)> {
        let endpoints = self.endpoints.load();
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.retain(|authority, _| endpoints.members.iter().any(|member| member.endpoint.authority() == authority));
        endpoints
            .members
            .iter()
            .map(|member| {
                let authority = member.endpoint.authority();
                if let Some(client) = clients.get(authority) {
                    return (Arc::clone(member), Some(client.clone()));
                }
                let uri = format!("http://{authority}");
                match mesh_kit::client::connect_lazy(&uri, self.connect_timeout) {
                    Ok(channel) => {
                        let client = HealthClient::new(channel);
                        clients.insert(authority.clone(), client.clone());
                        (Arc::clone(member), Some(client))
                    }
                    Err(error) => {
                        debug!(upstream = self.service_name, %authority, %error, "cannot build a health channel");
                        (Arc::clone(member), None)
                    }
                }
            })
            .collect()
    }
}

#[derive(Debug)]
struct HealthChecker {
    upstreams: Vec<UpstreamHealth>,
    check_timeout: Duration,
    poll_interval: Duration,
    /// Cancelled when the gateway starts draining.
    shutdown: CancellationToken,
}

// === impl GatewayHealth ===

impl GatewayHealth {
    pub(crate) fn new(
        upstreams: Vec<UpstreamHealth>,
        check_timeout: Duration,
        poll_interval: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self { checker: Arc::new(HealthChecker { upstreams, check_timeout, poll_interval, shutdown }) }
    }

    /// Probes every endpoint each poll interval until the drain, ejecting
    /// those that do not answer SERVING; see the module docs.
    pub(crate) fn probe_endpoints(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let checker = Arc::clone(&self.checker);
        async move {
            let mut ticker = tokio::time::interval(checker.poll_interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = checker.shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let rounds = checker.upstreams.iter().map(|upstream| checker.probe_upstream(upstream));
                futures_util::future::join_all(rounds).await;
            }
        }
    }
}

#[tonic::async_trait]
impl Health for GatewayHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let status = self.checker.status(&request.get_ref().service).await.map_err(|e| mesh_kit::to_status(&e))?;
        Ok(Response::new(HealthCheckResponse { status: status.into() }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        Ok(Response::new(Box::pin(watch_stream(Arc::clone(&self.checker), service))))
    }
}

// === impl HealthChecker ===

impl HealthChecker {
    /// The status of `service`: `""` is the whole mesh, [`GATEWAY_HEALTH_SERVICE`]
    /// the gateway alone, else one upstream.
    async fn status(&self, service: &str) -> Result<ServingStatus, HealthError> {
        if service.is_empty() {
            return Ok(self.mesh_status().await);
        }
        if service == GATEWAY_HEALTH_SERVICE {
            return Ok(self.gateway_status());
        }
        let Some(upstream) = self.upstreams.iter().find(|upstream| upstream.service_name == service) else {
            return Err(HealthError::UnknownService { service: service.to_owned() });
        };
        if self.shutdown.is_cancelled() {
            return Ok(ServingStatus::NotServing);
        }
        Ok(self.upstream_status(upstream, service).await)
    }

    /// The gateway's own status: it answers, so it serves, until it drains.
    fn gateway_status(&self) -> ServingStatus {
        if self.shutdown.is_cancelled() { ServingStatus::NotServing } else { ServingStatus::Serving }
    }

    /// SERVING iff every upstream is; with no upstream configured there is
    /// nothing to be unhealthy, so SERVING.
    async fn mesh_status(&self) -> ServingStatus {
        if self.shutdown.is_cancelled() {
            return ServingStatus::NotServing;
        }
        let checks = self.upstreams.iter().map(|upstream| self.upstream_status(upstream, ""));
        let statuses = futures_util::future::join_all(checks).await;
        if statuses.iter().all(|status| *status == ServingStatus::Serving) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }

    /// Asks the endpoints of `upstream` about `service`: SERVING if any is.
    async fn upstream_status(&self, upstream: &UpstreamHealth, service: &str) -> ServingStatus {
        let clients = upstream.current_clients();
        let checks = clients.iter().map(|(_member, client)| async move {
            match client {
                Some(client) => self.endpoint_status(upstream, client, service).await,
                None => ServingStatus::NotServing,
            }
        });
        let statuses = futures_util::future::join_all(checks).await;
        if statuses.contains(&ServingStatus::Serving) { ServingStatus::Serving } else { ServingStatus::NotServing }
    }

    /// Checks every endpoint of `upstream` once, ejecting those not serving.
    async fn probe_upstream(&self, upstream: &UpstreamHealth) {
        let ejection_time = upstream.endpoints.load().outliers.ejection_time;
        let clients = upstream.current_clients();
        let probes = clients.iter().map(|(member, client)| async move {
            let status = match client {
                Some(client) => self.endpoint_status(upstream, client, "").await,
                None => ServingStatus::NotServing,
            };
            if status != ServingStatus::Serving {
                member.eject_unhealthy(ejection_time);
            }
        });
        futures_util::future::join_all(probes).await;
    }

    /// Asks one endpoint about `service`; no answer within the check
    /// timeout, an error, or anything but SERVING counts as `NOT_SERVING`.
    async fn endpoint_status(
        &self,
        upstream: &UpstreamHealth,
        client: &HealthClient<MeshChannel>,
        service: &str,
    ) -> ServingStatus {
        let mut request = Request::new(HealthCheckRequest { service: service.to_owned() });
        request.set_timeout(self.check_timeout);
        let mut client = client.clone();
        match tokio::time::timeout(self.check_timeout, client.check(request)).await {
            Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving => ServingStatus::Serving,
            Ok(Ok(response)) => {
                let status = response.get_ref().status();
                debug!(upstream = upstream.service_name, status = status.as_str_name(), "upstream not serving");
                ServingStatus::NotServing
            }
            Ok(Err(status)) => {
                debug!(upstream = upstream.service_name, code = ?status.code(), "upstream health check failed");
                ServingStatus::NotServing
            }
            Err(_elapsed) => {
                debug!(upstream = upstream.service_name, timeout = ?self.check_timeout, "upstream health check timed out");
                ServingStatus::NotServing
            }
        }
    }

    /// As [`Self::status`], with an unknown service reported in-band as
    /// `SERVICE_UNKNOWN`, as the health protocol asks of `Watch`.
    async fn watched_status(&self, service: &str) -> ServingStatus {
        self.status(service).await.unwrap_or(ServingStatus::ServiceUnknown)
    }
}

/// What a `Watch` stream carries between messages.
struct WatchState {
    checker: Arc<HealthChecker>,
    service: String,
    ticker: tokio::time::Interval,
    last_sent: Option<ServingStatus>,
    is_finished: bool,
}

/// Sends the current status at once, then again whenever a poll finds it
/// changed; ends after reporting the drain.
fn watch_stream(
    checker: Arc<HealthChecker>,
    service: String,
) -> impl Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static {
    let mut ticker = tokio::time::interval(checker.poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let initial = WatchState { checker, service, ticker, last_sent: None, is_finished: false };
    futures_util::stream::unfold(initial, |mut state| async move {
        while !state.is_finished {
            let is_draining = tokio::select! {
                () = state.checker.shutdown.cancelled() => true,
                _ = state.ticker.tick() => false,
            };
            // While draining the status is NOT_SERVING (SERVICE_UNKNOWN stays as it is): sent once, then the end.
            let status = state.checker.watched_status(&state.service).await;
            state.is_finished = is_draining;
            if state.last_sent != Some(status) {
                state.last_sent = Some(status);
                return Some((Ok(HealthCheckResponse { status: status.into() }), state));
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn checker_without_upstreams(shutdown: CancellationToken) -> Arc<HealthChecker> {
        Arc::new(HealthChecker {
            upstreams: Vec::new(),
            check_timeout: Duration::from_secs(1),
            poll_interval: Duration::from_secs(3600),
            shutdown,
        })
    }

    #[tokio::test]
    async fn the_mesh_is_serving_until_the_drain_and_unknown_services_are_not_found() {
        let shutdown = CancellationToken::new();
        let checker = checker_without_upstreams(shutdown.clone());
        assert_eq!(checker.status("").await.unwrap(), ServingStatus::Serving);
        let unknown = checker.status("mesh.nope.v1.Nope").await.unwrap_err();
        assert!(matches!(&unknown, HealthError::UnknownService { service } if service == "mesh.nope.v1.Nope"));
        assert_eq!(mesh_kit::to_status(&unknown).code(), tonic::Code::NotFound);
        shutdown.cancel();
        assert_eq!(checker.status("").await.unwrap(), ServingStatus::NotServing);
    }

    #[tokio::test]
    async fn the_gateway_itself_is_serving_until_the_drain_and_watching_it_ends_there() {
        let shutdown = CancellationToken::new();
        let checker = checker_without_upstreams(shutdown.clone());
        assert_eq!(checker.status(GATEWAY_HEALTH_SERVICE).await.unwrap(), ServingStatus::Serving);
        let mut stream = Box::pin(watch_stream(Arc::clone(&checker), GATEWAY_HEALTH_SERVICE.to_owned()));
        assert_eq!(stream.next().await.unwrap().unwrap().status(), ServingStatus::Serving);
        shutdown.cancel();
        assert_eq!(checker.status(GATEWAY_HEALTH_SERVICE).await.unwrap(), ServingStatus::NotServing);
        assert_eq!(stream.next().await.unwrap().unwrap().status(), ServingStatus::NotServing);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn watch_sends_the_status_then_not_serving_on_drain_then_ends() {
        let shutdown = CancellationToken::new();
        let mut stream = Box::pin(watch_stream(checker_without_upstreams(shutdown.clone()), String::new()));
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving);
        shutdown.cancel();
        let last = stream.next().await.unwrap().unwrap();
        assert_eq!(last.status(), ServingStatus::NotServing);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn watching_an_unknown_service_says_so_in_band_and_ends_on_drain() {
        let shutdown = CancellationToken::new();
        let mut stream =
            Box::pin(watch_stream(checker_without_upstreams(shutdown.clone()), "mesh.nope.v1.Nope".into()));
        assert_eq!(stream.next().await.unwrap().unwrap().status(), ServingStatus::ServiceUnknown);
        shutdown.cancel();
        assert!(stream.next().await.is_none());
    }
}
