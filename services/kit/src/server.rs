//! The one way a mesh service serves gRPC: a tonic server with health,
//! reflection (v1 and v1alpha), the correlation and span layers, HTTP/2
//! keepalive and connection-age limits, and a graceful shutdown that marks
//! the services `NOT_SERVING`, stops accepting, and drains in-flight calls.

use std::convert::Infallible;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tracing::{info, warn};

use crate::config::{ConfigProblem, ServiceConfig, duration_secs};
use crate::correlation::CorrelationLayer;
use crate::introspection::{MemoryGauge, MemoryGauges, MemoryIntrospectionGrpc};
use crate::rpc_span::RpcSpanLayer;
use crate::unknown_method::UnknownMethodLayer;

/// Transport settings shared by every service, from `MESH_SERVER_*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Interval between HTTP/2 PINGs on idle connections.
    #[serde(with = "duration_secs")]
    pub keepalive_interval: Duration,
    /// How long to wait for a PING ack before closing the connection.
    #[serde(with = "duration_secs")]
    pub keepalive_timeout: Duration,
    /// Connections older than this are asked to go away, so clients
    /// re-resolve and load spreads over new replicas.
    #[serde(with = "duration_secs")]
    pub max_connection_age: Duration,
    /// How long a connection past its age may finish its calls.
    #[serde(with = "duration_secs")]
    pub max_connection_age_grace: Duration,
    /// Concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Streams a peer may reset before being accepted; set high on purpose
    /// because a proxy that cancels many calls at once (a load generator
    /// stopping) would otherwise get the whole shared connection closed.
    pub max_pending_accept_reset_streams: usize,
    /// How long shutdown waits for in-flight calls before giving up on them.
    #[serde(with = "duration_secs")]
    pub shutdown_grace: Duration,
    /// Whether `MemoryIntrospection.HeapProfile` may sample and dump the heap.
    /// Needs a process started with jemalloc's `prof:true` (the `mesh` binary's
    /// `malloc_conf`); sampling starts when the server does.
    pub heap_profiling: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 8 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(30),
            max_concurrent_streams: 1024,
            max_pending_accept_reset_streams: 1024,
            shutdown_grace: Duration::from_secs(20),
            heap_profiling: false,
        }
    }
}

impl ServiceConfig for ServerSettings {
    const FILE_SECTION: &'static str = "server";
    const ENV_PREFIX: &'static str = "MESH_SERVER_";

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        ConfigProblem::check_range(&mut problems, "max_message_bytes", self.max_message_bytes, 1024, 256 * 1024 * 1024);
        ConfigProblem::check_range(&mut problems, "max_concurrent_streams", self.max_concurrent_streams, 1, 1_000_000);
        let second = Duration::from_secs(1);
        for (field, value) in [
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
            ("max_connection_age", self.max_connection_age),
        ] {
            if value < second {
                problems.push(ConfigProblem::new(field, format!("must be at least 1s (got {value:?})")));
            }
        }
        problems
    }
}

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Configuration was invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not load a descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A listener or socket failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A tonic server being assembled: services, their descriptor sets, and
/// the health statuses that track them.
#[derive(Debug)]
pub struct MeshServer {
    settings: ServerSettings,
    routes: RoutesBuilder,
    descriptor_sets: Vec<&'static [u8]>,
    service_names: Vec<&'static str>,
    memory_gauges: MemoryGauges,
}

impl MeshServer {
    /// A server with no services yet.
    #[must_use]
    pub fn new(settings: ServerSettings) -> Self {
        Self {
            settings,
            routes: RoutesBuilder::default(),
            descriptor_sets: Vec::new(),
            service_names: Vec::new(),
            memory_gauges: MemoryGauges::new(),
        }
    }

    /// Registers a gauge that `MemoryIntrospection.GetMemoryStats` reports
    /// (and the `MemoryProfiler` watches for leaks) under `name`, e.g.
    /// `cache_bytes`; end the name in `_bytes` when it counts bytes.
    #[must_use]
    pub fn with_memory_gauge(self, name: impl Into<String>, gauge: MemoryGauge) -> Self {
        self.memory_gauges.register(name, gauge);
        self
    }

    /// The server's gauge registry, to register parts created after the
    /// server is built; clones share it.
    #[must_use]
    pub fn memory_gauges(&self) -> MemoryGauges {
        self.memory_gauges.clone()
    }

    /// The transport settings, for services that size their own limits.
    #[must_use]
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// Adds a generated tonic service and the descriptor set of its package.
    #[must_use]
    pub fn add_service<S>(mut self, service: S, descriptor_set: &'static [u8]) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.descriptor_sets.push(descriptor_set);
        self.service_names.push(S::NAME);
        self
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight calls for
    /// up to `shutdown_grace`.
    pub async fn serve(mut self, listener: TcpListener, shutdown: CancellationToken) -> Result<(), ServeError> {
        let local_addr = listener.local_addr()?;
        self = self.with_memory_introspection().await;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        for name in &self.service_names {
            health_reporter.set_service_status(*name, ServingStatus::Serving).await;
        }
        let (reflection_v1, reflection_v1alpha) = reflection_services(&self.descriptor_sets)?;
        self.routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);

        let settings = &self.settings;
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(settings.keepalive_interval))
            .http2_keepalive_timeout(Some(settings.keepalive_timeout))
            .max_connection_age(settings.max_connection_age)
            .max_connection_age_grace(settings.max_connection_age_grace)
            .max_concurrent_streams(settings.max_concurrent_streams)
            .http2_max_pending_accept_reset_streams(Some(settings.max_pending_accept_reset_streams))
            .layer(
                ServiceBuilder::new()
                    .layer(CorrelationLayer::new())
                    .layer(RpcSpanLayer::server())
                    // Inside the correlation scope, so the status carries the call's id.
                    .layer(UnknownMethodLayer)
                    .into_inner(),
            );
        let mut server = server;
        let router = server.add_routes(self.routes.routes());

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let draining = {
            let shutdown = shutdown.clone();
            let services = self.service_names.clone();
            async move {
                shutdown.cancelled().await;
                info!(%local_addr, "draining");
                for name in services {
                    health_reporter.set_service_status(name, ServingStatus::NotServing).await;
                }
            }
        };
        info!(%local_addr, services = ?self.service_names, "serving");
        let serving = router.serve_with_incoming_shutdown(incoming, draining);
        tokio::pin!(serving);
        tokio::select! {
            result = &mut serving => result?,
            () = async { shutdown.cancelled().await; tokio::time::sleep(settings.shutdown_grace).await } => {
                warn!(%local_addr, grace = ?settings.shutdown_grace, "in-flight calls outlived the shutdown grace period");
            }
        }
        info!(%local_addr, "stopped");
        Ok(())
    }
}

impl MeshServer {
    /// Adds `mesh.memory.v1.MemoryIntrospection`, which every server runs, and
    /// starts heap sampling when `heap_profiling` is set.
    async fn with_memory_introspection(self) -> Self {
        use mesh_proto::memory::v1::INTROSPECTION_FILE_DESCRIPTOR_SET;
        use mesh_proto::memory::v1::memory_introspection_server::MemoryIntrospectionServer;

        let heap_profiling = self.settings.heap_profiling;
        if heap_profiling && let Err(error) = crate::allocator::activate_heap_profiling().await {
            warn!(%error, "heap profiling requested but unavailable; HeapProfile will refuse");
        }
        let introspection =
            MemoryIntrospectionServer::new(MemoryIntrospectionGrpc::new(self.memory_gauges.clone(), heap_profiling))
                .max_encoding_message_size(self.settings.max_message_bytes);
        self.add_service(introspection, INTROSPECTION_FILE_DESCRIPTOR_SET)
    }
}

/// Builds reflection v1 and v1alpha (grpcurl 1.8 speaks only v1alpha) over
/// the given descriptor sets, health's, and `google.rpc`'s error details so
/// clients such as grpcurl can decode `ErrorInfo` and `BadRequest`.
pub fn reflection_services(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let v1 = descriptor_sets
        .iter()
        .fold(tonic_reflection::server::Builder::configure(), |b, set| b.register_encoded_file_descriptor_set(set))
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = descriptor_sets
        .iter()
        .fold(tonic_reflection::server::Builder::configure(), |b, set| b.register_encoded_file_descriptor_set(set))
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}
