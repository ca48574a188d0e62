//! The innermost service of the caller-facing stack: it picks a call's
//! destination from its path alone — local health, local reflection (v1 and
//! v1alpha), the upstream stack of a configured service, or an UNIMPLEMENTED
//! refusal naming the service nobody serves.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use mesh_kit::error::EdgeError;
use mesh_kit::rpc_span::split_grpc_path;
use pin_project_lite::pin_project;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::message_limit::LimitedResponseBody;
use crate::proxy::UpstreamBody;
use crate::stack::UpstreamService;

/// The body of every response: an upstream's body passed through untouched,
/// or the body of a local service.
pub(crate) type ResponseBody = Either<LimitedResponseBody<UpstreamBody>, tonic::body::Body>;

/// A service answered by the gateway itself (health, reflection). Boxed
/// because reflection's type cannot be named; these calls are rare.
pub(crate) type LocalService = BoxCloneSyncService<Request<tonic::body::Body>, Response<tonic::body::Body>, Infallible>;

type LocalFuture = Pin<Box<dyn Future<Output = Result<Response<tonic::body::Body>, Infallible>> + Send>>;

/// Routes each call; see the module docs. Cloned for every call, so it is
/// one `Arc`.
#[derive(Clone, Debug)]
pub(crate) struct Router {
    routes: Arc<Routes>,
}

/// One configured service and the stack that reaches its endpoints.
#[derive(Debug)]
pub(crate) struct UpstreamRoute {
    pub(crate) service_name: &'static str,
    pub(crate) service: UpstreamService,
}

/// The gateway's own services.
pub(crate) struct LocalServices {
    pub(crate) health: LocalService,
    pub(crate) reflection_v1: LocalService,
    pub(crate) reflection_v1alpha: LocalService,
}

struct Routes {
    /// The configured services. A scan beats hashing for the handful of
    /// services the mesh has, and keeps the table in config order.
    upstreams: Vec<UpstreamRoute>,
    local: LocalServices,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("upstreams", &self.upstreams).finish_non_exhaustive()
    }
}

/// Where a call goes; `U` is the upstream route, a bare name under fuzzing.
#[derive(Debug)]
pub(crate) enum Destination<'a, U> {
    Health,
    ReflectionV1,
    ReflectionV1Alpha,
    Upstream(&'a U),
    UnknownService { service: &'a str },
    MalformedPath,
}

/// Picks the destination of the call to `path`. The gateway's own services
/// come first, so an upstream can never shadow health or reflection.
/// Generic over the route so the fuzz target (`crate::fuzzing`) can route
/// over bare service names without building upstream stacks.
pub(crate) fn select_destination<'a, U>(
    path: &'a str,
    upstreams: &'a [U],
    service_name_of: impl Fn(&U) -> &str,
) -> Destination<'a, U> {
    let Some((service, _method)) = split_grpc_path(path) else {
        return Destination::MalformedPath;
    };
    match service {
        tonic_health::pb::health_server::SERVICE_NAME => Destination::Health,
        tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME => Destination::ReflectionV1,
        tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME => Destination::ReflectionV1Alpha,
        _ => match upstreams.iter().find(|upstream| service_name_of(upstream) == service) {
            Some(upstream) => Destination::Upstream(upstream),
            None => Destination::UnknownService { service },
        },
    }
}

// === impl UpstreamRoute ===

impl UpstreamRoute {
    fn name(&self) -> &str {
        self.service_name
    }
}

// === impl Router ===

impl Router {
    pub(crate) fn new(upstreams: Vec<UpstreamRoute>, local: LocalServices) -> Self {
        Self { routes: Arc::new(Routes { upstreams, local }) }
    }

    /// The services routed to an upstream, in config order.
    pub(crate) fn upstream_services(&self) -> Vec<&'static str> {
        self.routes.upstreams.iter().map(|upstream| upstream.service_name).collect()
    }
}

type UpstreamFuture = <UpstreamService as Service<Request<Incoming>>>::Future;

pin_project! {
    /// The future of each kind of destination; only local calls are boxed.
    #[project = RouteFutureProjection]
    #[allow(missing_debug_implementations)] // holds unnameable futures
    pub(crate) enum RouteFuture {
        Upstream { #[pin] inner: UpstreamFuture },
        Local { #[pin] inner: LocalFuture },
        Refused { error: Option<EdgeError> },
    }
}

impl Future for RouteFuture {
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouteFutureProjection::Upstream { inner } => inner.poll(cx).map_ok(|response| response.map(Either::Left)),
            RouteFutureProjection::Local { inner } => match std::task::ready!(inner.poll(cx)) {
                Ok(response) => Poll::Ready(Ok(response.map(Either::Right))),
                Err(never) => match never {},
            },
            RouteFutureProjection::Refused { error } => {
                Poll::Ready(Err(error.take().expect("a refusal is polled once, then dropped").into()))
            }
        }
    }
}

impl Service<Request<Incoming>> for Router {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let (local, upstreams) = (&self.routes.local, &self.routes.upstreams);
        let local_service = match select_destination(request.uri().path(), upstreams, UpstreamRoute::name) {
            Destination::Upstream(upstream) => {
                return RouteFuture::Upstream { inner: upstream.service.clone().call(request) };
            }
            Destination::UnknownService { service } => {
                let error = EdgeError::UnknownService { service: service.to_owned() };
                return RouteFuture::Refused { error: Some(error) };
            }
            Destination::MalformedPath => {
                let error = EdgeError::MalformedPath { path: request.uri().path().to_owned() };
                return RouteFuture::Refused { error: Some(error) };
            }
            Destination::Health => local.health.clone(),
            Destination::ReflectionV1 => local.reflection_v1.clone(),
            Destination::ReflectionV1Alpha => local.reflection_v1alpha.clone(),
        };
        RouteFuture::Local { inner: Box::pin(local_service.oneshot(request.map(tonic::body::Body::new))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;

    fn cache_route() -> UpstreamRoute {
        let config =
            GatewayConfig { cache_upstream: Some("http://127.0.0.1:50061".into()), ..GatewayConfig::default() };
        let settings = crate::reload::LiveSettings::new(&config).expect("valid settings");
        let metrics = crate::metrics::GatewayMetrics::new([]);
        let upstream = &settings.upstreams[0];
        UpstreamRoute {
            service_name: upstream.service_name,
            service: crate::stack::upstream_service(upstream, &metrics),
        }
    }

    /// The destination, as text: the variant and the service it names.
    fn check(path: &str, expected: &str) {
        let upstreams = [cache_route()];
        let destination = match select_destination(path, &upstreams, UpstreamRoute::name) {
            Destination::Health => "health".to_owned(),
            Destination::ReflectionV1 => "reflection v1".to_owned(),
            Destination::ReflectionV1Alpha => "reflection v1alpha".to_owned(),
            Destination::Upstream(upstream) => format!("upstream {}", upstream.service_name),
            Destination::UnknownService { service } => format!("unknown {service}"),
            Destination::MalformedPath => "malformed".to_owned(),
        };
        assert_eq!(destination, expected, "{path}");
    }

    #[test]
    fn calls_are_routed_by_the_service_in_their_path() {
        check("/mesh.cache.v1.Cache/Get", "upstream mesh.cache.v1.Cache");
        check("/mesh.cache.v1.Cache/Warm", "upstream mesh.cache.v1.Cache");
        check("/grpc.health.v1.Health/Check", "health");
        check("/grpc.health.v1.Health/Watch", "health");
        check("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "reflection v1");
        check("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "reflection v1alpha");
        check("/mesh.nope.v1.Nope/Get", "unknown mesh.nope.v1.Nope");
        check("/mesh.cache.v2.Cache/Get", "unknown mesh.cache.v2.Cache");
        check("/mesh.cache.v1.cache/Get", "unknown mesh.cache.v1.cache");
    }

    #[test]
    fn paths_that_are_not_grpc_methods_are_malformed() {
        check("/", "malformed");
        check("/mesh.cache.v1.Cache", "malformed");
        check("/mesh.cache.v1.Cache/", "malformed");
        check("//Get", "malformed");
        check("/mesh.cache.v1.Cache/Get/extra", "malformed");
    }
}
