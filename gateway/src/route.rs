//! The innermost service of the stack: it picks a call's destination from
//! its path alone — local health, local reflection (v1 and v1alpha), the
//! upstream of a configured service, or an UNIMPLEMENTED status naming the
//! service nobody serves.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use mesh_kit::CancellationToken;
use mesh_kit::error::EdgeError;
use mesh_kit::rpc_span::split_grpc_path;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::config::{GatewayConfig, parse_upstream_uri};
use crate::error::GatewayError;
use crate::health::{GatewayHealth, UpstreamHealth};
use crate::proxy::Upstream;

/// The body of every response: an upstream's body passed through untouched,
/// or the body of a local service or an error status.
pub(crate) type ResponseBody = Either<Incoming, tonic::body::Body>;

/// A service answered by the gateway itself (health, reflection). Boxed
/// because reflection's type cannot be named; these calls are rare.
type LocalService = BoxCloneSyncService<Request<tonic::body::Body>, Response<tonic::body::Body>, Infallible>;

/// Boxed because hyper's response future cannot be named on stable Rust;
/// this is the one allocation the gateway adds per proxied call.
type RouteFuture = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

/// Routes each call; see the module docs. Cloned for every call, so it is
/// one `Arc`.
#[derive(Clone, Debug)]
pub(crate) struct Router {
    routes: Arc<Routes>,
}

struct Routes {
    /// The configured services. A scan beats hashing for the handful of
    /// services the mesh has, and keeps the table in config order.
    upstreams: Vec<Arc<Upstream>>,
    health: LocalService,
    reflection_v1: LocalService,
    reflection_v1alpha: LocalService,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("upstreams", &self.upstreams).finish_non_exhaustive()
    }
}

/// Where a call goes.
#[derive(Debug)]
enum Destination<'a> {
    Health,
    ReflectionV1,
    ReflectionV1Alpha,
    Upstream(&'a Arc<Upstream>),
    UnknownService { service: &'a str },
    MalformedPath,
}

/// Picks the destination of the call to `path`. The gateway's own services
/// come first, so an upstream can never shadow health or reflection.
fn select_destination<'a>(path: &'a str, upstreams: &'a [Arc<Upstream>]) -> Destination<'a> {
    let Some((service, _method)) = split_grpc_path(path) else {
        return Destination::MalformedPath;
    };
    match service {
        tonic_health::pb::health_server::SERVICE_NAME => Destination::Health,
        tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME => Destination::ReflectionV1,
        tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME => Destination::ReflectionV1Alpha,
        _ => match upstreams.iter().find(|upstream| upstream.service_name() == service) {
            Some(upstream) => Destination::Upstream(upstream),
            None => Destination::UnknownService { service },
        },
    }
}

// === impl Router ===

impl Router {
    /// The routes of every service with a configured upstream, with health
    /// and reflection over exactly those services. Connects nothing yet.
    pub(crate) fn new(config: &GatewayConfig, shutdown: CancellationToken) -> Result<Self, GatewayError> {
        let mut upstreams = Vec::new();
        let mut upstream_healths = Vec::new();
        let mut descriptor_sets = Vec::new();
        for route in config.service_routes() {
            let Some(raw_uri) = route.upstream_uri else {
                continue;
            };
            let authority = parse_upstream_uri(raw_uri).map_err(|problem| {
                GatewayError::Config(mesh_kit::ConfigError::Invalid {
                    problems: vec![format!("{}: {problem}", route.upstream_field)],
                })
            })?;
            upstreams.push(Arc::new(Upstream::new(route.service_name, authority, config)));
            let health_channel = mesh_kit::client::connect_lazy(raw_uri, config.upstream_connect_timeout)
                .map_err(|source| GatewayError::HealthChannel { service: route.service_name, source })?;
            upstream_healths
                .push(UpstreamHealth { service_name: route.service_name, client: HealthClient::new(health_channel) });
            descriptor_sets.push(route.descriptor_set);
        }
        let health =
            GatewayHealth::new(upstream_healths, config.health_check_timeout, config.health_poll_interval, shutdown);
        let (reflection_v1, reflection_v1alpha) = mesh_kit::server::reflection_services(&descriptor_sets)?;
        let routes = Routes {
            upstreams,
            health: BoxCloneSyncService::new(HealthServer::new(health)),
            reflection_v1: BoxCloneSyncService::new(reflection_v1),
            reflection_v1alpha: BoxCloneSyncService::new(reflection_v1alpha),
        };
        Ok(Self { routes: Arc::new(routes) })
    }

    /// The services routed to an upstream, in config order.
    pub(crate) fn upstream_services(&self) -> Vec<&'static str> {
        self.routes.upstreams.iter().map(|upstream| upstream.service_name()).collect()
    }
}

impl Service<Request<Incoming>> for Router {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let local_service = match select_destination(request.uri().path(), &self.routes.upstreams) {
            Destination::Upstream(upstream) => {
                let upstream = Arc::clone(upstream);
                return Box::pin(async move { Ok(upstream.forward(request).await) });
            }
            Destination::UnknownService { service } => {
                return error_response(&EdgeError::UnknownService { service: service.to_owned() });
            }
            Destination::MalformedPath => {
                return error_response(&EdgeError::MalformedPath { path: request.uri().path().to_owned() });
            }
            Destination::Health => self.routes.health.clone(),
            Destination::ReflectionV1 => self.routes.reflection_v1.clone(),
            Destination::ReflectionV1Alpha => self.routes.reflection_v1alpha.clone(),
        };
        Box::pin(async move {
            let response = local_service.oneshot(request.map(tonic::body::Body::new)).await?;
            Ok(response.map(Either::Right))
        })
    }
}

/// A trailers-only error response. Called inside the call's context, so the
/// status carries the correlation id.
fn error_response(error: &EdgeError) -> RouteFuture {
    let response = mesh_kit::to_status(error).into_http::<tonic::body::Body>().map(Either::Right);
    Box::pin(std::future::ready(Ok(response)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_upstream() -> Arc<Upstream> {
        let authority = parse_upstream_uri("http://127.0.0.1:50061").unwrap();
        Arc::new(Upstream::new("mesh.cache.v1.Cache", authority, &GatewayConfig::default()))
    }

    /// The destination, as text: the variant and the service it names.
    fn check(path: &str, expected: &str) {
        let upstreams = [cache_upstream()];
        let destination = match select_destination(path, &upstreams) {
            Destination::Health => "health".to_owned(),
            Destination::ReflectionV1 => "reflection v1".to_owned(),
            Destination::ReflectionV1Alpha => "reflection v1alpha".to_owned(),
            Destination::Upstream(upstream) => format!("upstream {}", upstream.service_name()),
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

    #[tokio::test]
    async fn an_unknown_service_is_unimplemented_and_named_with_the_correlation_id() {
        let context = mesh_kit::CallContext {
            correlation_id: mesh_kit::CorrelationId::parse("corr-route-1").unwrap(),
            deadline: None,
        };
        let response = mesh_kit::correlation::scope(context, async {
            error_response(&EdgeError::UnknownService { service: "mesh.nope.v1.Nope".into() }).await.unwrap()
        })
        .await;
        let status = tonic::Status::from_header_map(response.headers()).expect("trailers-only status in the headers");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("mesh.nope.v1.Nope"), "{}", status.message());
        assert_eq!(response.headers()["x-correlation-id"], "corr-route-1");
    }
}
