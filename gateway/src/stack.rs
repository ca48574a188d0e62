//! The gateway's request stack, written once and outermost first, and the
//! HTTP/2 settings of the caller-facing listener. Later layers (auth, limits,
//! deadlines, retries, balancing, metrics) are added here, in order.

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::service::TowerToHyperService;
use mesh_kit::correlation::Correlation;
use mesh_kit::rpc_span::RpcSpan;
use mesh_kit::{CorrelationLayer, RpcSpanLayer};
use tower::ServiceBuilder;

use crate::config::GatewayConfig;
use crate::route::Router;

/// The whole stack as one hyper service; hyper clones it for every call,
/// which costs one `Arc` increment (the router's).
pub(crate) type GatewayService = TowerToHyperService<Correlation<RpcSpan<Router>>>;

/// Builds the stack around `router`.
pub(crate) fn gateway_service(router: Router) -> GatewayService {
    let stack = ServiceBuilder::new()
        // Accepts the caller's correlation id or mints one before anything logs, so the span, every error
        // status and the forwarded request carry the same id; echoes it on the response.
        .layer(CorrelationLayer::new())
        // The root span of the call, joined to the caller's `traceparent`; it records the final grpc-status
        // from headers or trailers, and the proxy passes its trace context upstream.
        .layer(RpcSpanLayer::proxy())
        // Health and reflection answered here, the upstream of a configured service, or UNIMPLEMENTED.
        .service(router);
    TowerToHyperService::new(stack)
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
        // h2 tolerates only ~20 by default and then closes the caller's whole connection; a client
        // cancelling its calls in flight at once is normal, not an attack (see the config docs).
        .max_pending_accept_reset_streams(config.max_pending_accept_reset_streams);
    builder
}
