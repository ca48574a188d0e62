//! The gateway's stacks, each written once and outermost first (the first
//! layer added sees the request first), with why each layer sits where it
//! does; and the HTTP/2 settings of the caller-facing listener.

use std::sync::Arc;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_kit::correlation::Correlation;
use mesh_kit::rpc_span::RpcSpan;
use mesh_kit::{CorrelationLayer, RpcSpanLayer};
use tower::ServiceBuilder;

use crate::access_log::{AccessLog, AccessLogLayer};
use crate::access_sink::AccessLogSink;
use crate::authn::{Authn, AuthnLayer};
use crate::balance::Balance;
use crate::config::GatewayConfig;
use crate::deadline::{Deadline, DeadlineLayer};
use crate::load_shed::{LoadShed, LoadShedLayer};
use crate::message_limit::{MessageLimit, MessageLimitLayer};
use crate::metrics::{GatewayMetrics, Metrics, MetricsLayer};
use crate::rate_limit::{RateLimit, RateLimitLayer};
use crate::reload::{LiveSettings, LiveUpstream};
use crate::rescue::{Rescue, RescueLayer};
use crate::retry::{Retry, RetryLayer};
use crate::route::Router;

/// The caller-facing stack, spelled out so it is cloned without boxing;
/// hyper clones it for every call, which costs a few `Arc` increments.
pub(crate) type CallerStack =
    Correlation<RpcSpan<AccessLog<Metrics<Rescue<Authn<RateLimit<LoadShed<Deadline<Router>>>>>>>>>;

/// How a routed call reaches a service's endpoints.
pub(crate) type UpstreamService = MessageLimit<Retry<Balance>>;

/// Builds the caller-facing stack around `router`.
pub(crate) fn caller_stack(
    router: Router,
    settings: &LiveSettings,
    metrics: &Arc<GatewayMetrics>,
    access_sink: &Arc<AccessLogSink>,
) -> CallerStack {
    ServiceBuilder::new()
        // Accepts the caller's correlation id or mints one before anything logs, so the span, every error
        // status and the forwarded request carry the same id; echoes it on the response.
        .layer(CorrelationLayer::new())
        // The root span of the call, joined to the caller's `traceparent`; it records the final grpc-status
        // from headers or trailers, and the proxy passes its trace context upstream.
        .layer(RpcSpanLayer::proxy())
        // One line per call, refused ones included, so it sits above everything that can refuse.
        .layer(AccessLogLayer::new(Arc::clone(&settings.access_log), Arc::clone(access_sink)))
        // Counts and times every call by its final status, refusals included, for the same reason.
        .layer(MetricsLayer::new(Arc::clone(metrics)))
        // Below here every layer returns its own typed error; here each becomes a gRPC status, in one place.
        .layer(RescueLayer::new(Arc::clone(metrics)))
        // Refuses anonymous or unauthorized calls before they spend any budget, and names the caller for the
        // rate limit; public services (health, reflection) pass without credentials.
        .layer(AuthnLayer::new(Arc::clone(&settings.authn)))
        // Per caller, so it needs the caller's name; before the concurrency limit, so a caller over its rate
        // never holds one of the shared slots.
        .layer(RateLimitLayer::new(Arc::clone(&settings.rate_limits)))
        // Sheds a call at once when the gateway is full, instead of queueing it; the slot is held until
        // the response body ends.
        .layer(LoadShedLayer::new(Arc::clone(&settings.in_flight)))
        // Gives the call its deadline (the caller's, capped per route, or the route's default) and enforces
        // it over retries and balancing below, which forward the remaining budget per attempt.
        .layer(DeadlineLayer::new(Arc::clone(&settings.deadlines)))
        // Health and reflection answered here, the upstream stack of a configured service, or UNIMPLEMENTED.
        .service(router)
}

/// Builds the stack that reaches the endpoints of one service.
pub(crate) fn upstream_service(upstream: &LiveUpstream, metrics: &GatewayMetrics) -> UpstreamService {
    ServiceBuilder::new()
        // Checks every message's length prefix in both directions as the bodies stream past; above retry, so a
        // body kept for replay is checked once, as it is read.
        .layer(MessageLimitLayer::new(Arc::clone(&upstream.message_limits)))
        // Replays idempotent calls that failed UNAVAILABLE, within the retry budget; above balancing so each
        // attempt picks its endpoint afresh, and the failed one has just counted against itself.
        .layer(RetryLayer::new(Arc::clone(&upstream.retry), metrics.retries_of(upstream.service_name)))
        // Picks an endpoint (two random choices, lower peak-EWMA load, outliers ejected) and forwards the call
        // over that endpoint's pooled HTTP/2 connections; a request that never left moves to another endpoint.
        .service(Balance::new(upstream.service_name, Arc::clone(&upstream.endpoints)))
}

/// The caller-facing HTTP/2 server: h2c with prior knowledge, as gRPC
/// clients speak it; no HTTP/1 and no protocol sniffing on the hot path.
pub(crate) fn http2_server(config: &GatewayConfig) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        // Keepalive PINGs need a timer; they find callers that vanished without closing their connection.
        .timer(TokioTimer::new())
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(config.max_header_list_bytes)
        // h2 tolerates only ~20 by default and then closes the caller's whole connection; a client
        // cancelling its calls in flight at once is normal, not an attack (see the config docs).
        .max_pending_accept_reset_streams(config.max_pending_accept_reset_streams);
    builder
}
