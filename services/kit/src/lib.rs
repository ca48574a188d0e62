//! What every mesh server shares, written once: configuration loading and
//! reload, telemetry, correlation ids and call context, the error → status
//! mapping, the tonic server with health and reflection, service-to-service
//! channels, shutdown and memory stats. A service crate holds only its domain.
//!
//! # Layout
//! - [`config`]: defaults → file → environment, validated; hot reload.
//! - [`database`]: database URLs that never print a password; `connect` (feature `sql`).
//! - [`correlation`]: `x-correlation-id`, deadlines, the [`CallContext`].
//! - [`header_names`]: the per-call headers as `HeaderName` constants.
//! - [`rpc_span`]: one span per RPC, joined to the caller's trace.
//! - [`telemetry`]: log format, OTLP export, `traceparent` propagation.
//! - [`error`]: [`RpcError`] and the only place a `tonic::Status` is built.
//! - [`server`]: [`MeshServer`], the bootstrap every service uses.
//! - [`unknown_method`]: the error model's status for a method a server does not serve.
//! - [`client`]: [`client::MeshChannel`] for calls between services.
//! - [`shutdown`], [`memory`]: signals and `/proc/self` memory use.
//! - [`allocator`]: jemalloc's figures, purging, heap profiles.
//! - [`introspection`]: `mesh.memory.v1.MemoryIntrospection`, on every server,
//!   and [`MemoryGauges`], the sizes a service reports for its parts.

#![forbid(unsafe_code)]

pub mod allocator;
pub mod client;
pub mod config;
pub mod correlation;
pub mod database;
pub mod error;
pub mod header_names;
pub mod introspection;
pub mod memory;
pub mod rpc_span;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod unknown_method;

pub use config::{ConfigError, ConfigProblem, ConfigSource, ConfigWatch, ServiceConfig};
pub use correlation::{CallContext, CorrelationId, CorrelationLayer};
pub use database::{DatabaseLocation, DatabaseUrl};
pub use error::{RpcError, to_status, to_status_proto};
pub use introspection::{MemoryGauge, MemoryGauges};
pub use rpc_span::RpcSpanLayer;
pub use server::{MeshServer, ServeError, ServerSettings};
pub use tokio_util::sync::CancellationToken;

// Unit tests allocate through jemalloc, as the `mesh` binary does, so the
// allocator's figures are real.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Everything a service needs to start: where to listen, its settings, and
/// when to stop. Built by the `mesh` binary, or by tests on port 0.
#[derive(Debug)]
pub struct Runtime {
    /// The bound listener; binding is the caller's job so tests can use port 0.
    pub listener: tokio::net::TcpListener,
    /// Transport settings.
    pub server_settings: ServerSettings,
    /// Where the service reads its own typed configuration.
    pub config_source: ConfigSource,
    /// Cancelled to stop the service gracefully.
    pub shutdown: CancellationToken,
}
