//! The table of services this binary can run: how each is named, where
//! `mesh up` puts it, which gateway setting routes to it, how its settings
//! are checked before any port is bound, and how it is served. Adding a
//! service to the mesh is one entry here.

use std::future::Future;
use std::pin::Pin;

use clap::ValueEnum;
use mesh_kit::{ConfigError, ConfigSource, Runtime, ServeError, ServiceConfig};

/// A running service: resolves when it has stopped.
pub(crate) type ServiceFuture = Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send>>;

/// The services `mesh serve` can run, and `mesh up` runs together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServiceName {
    /// `mesh.cache.v1.Cache`.
    Cache,
    /// `mesh.vpnusers.v1.VpnUsers`.
    Vpnusers,
    /// `mesh.virtualmin.v1.VirtualminGateway`.
    Virtualmin,
    /// `mesh.docker.v1.DockerOps`.
    Docker,
    /// `mesh.memory.v1.MemoryProfiler`.
    Memory,
    /// `mesh.bulkops.v1.BulkOps`.
    Bulkops,
}

/// How the binary runs one service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServiceSpec {
    /// The service.
    pub(crate) name: ServiceName,
    /// The name printed by `mesh up`, and `service.name` of its spans under `mesh serve`.
    pub(crate) label: &'static str,
    /// `mesh up` listens on the base port plus this offset.
    pub(crate) port_offset: u16,
    /// The gateway setting that routes to this service.
    pub(crate) gateway_upstream_var: &'static str,
    /// Loads and validates the service's settings.
    pub(crate) check: fn(&ConfigSource) -> Result<(), ConfigError>,
    /// Serves the service until its shutdown token is cancelled.
    pub(crate) run: fn(Runtime) -> ServiceFuture,
}

fn check<T: ServiceConfig>(source: &ConfigSource) -> Result<(), ConfigError> {
    mesh_kit::config::load::<T>(source).map(drop)
}

/// Every service, in the order `mesh up` starts them (the cache first, as
/// others read through it).
pub(crate) const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: ServiceName::Cache,
        label: "cache",
        port_offset: 0,
        gateway_upstream_var: "MESH_GATEWAY_CACHE_UPSTREAM",
        check: check::<mesh_cache::CacheConfig>,
        run: |rt| Box::pin(mesh_cache::run(rt)),
    },
    ServiceSpec {
        name: ServiceName::Vpnusers,
        label: "vpnusers",
        port_offset: 1,
        gateway_upstream_var: "MESH_GATEWAY_VPNUSERS_UPSTREAM",
        // Through the aliases, so the standard `DATABASE_URL` is checked too.
        check: |source| check::<mesh_vpnusers::VpnUsersConfig>(&mesh_vpnusers::config::with_aliases(source)),
        run: |rt| Box::pin(mesh_vpnusers::run(rt)),
    },
    ServiceSpec {
        name: ServiceName::Virtualmin,
        label: "virtualmin",
        port_offset: 2,
        gateway_upstream_var: "MESH_GATEWAY_VIRTUALMIN_UPSTREAM",
        check: check::<mesh_virtualmin::VirtualminConfig>,
        run: |rt| Box::pin(mesh_virtualmin::run(rt)),
    },
    ServiceSpec {
        name: ServiceName::Docker,
        label: "docker",
        port_offset: 3,
        gateway_upstream_var: "MESH_GATEWAY_DOCKER_UPSTREAM",
        // `DockerConfig::load` also reads the standard `DOCKER_HOST`.
        check: |source| mesh_docker::DockerConfig::load(source).map(drop),
        run: |rt| Box::pin(mesh_docker::run(rt)),
    },
    ServiceSpec {
        name: ServiceName::Memory,
        label: "memory",
        port_offset: 4,
        gateway_upstream_var: "MESH_GATEWAY_MEMORY_UPSTREAM",
        check: check::<mesh_memory::MemoryProfilerConfig>,
        run: |rt| Box::pin(mesh_memory::run(rt)),
    },
    ServiceSpec {
        name: ServiceName::Bulkops,
        label: "bulkops",
        port_offset: 5,
        gateway_upstream_var: "MESH_GATEWAY_BULKOPS_UPSTREAM",
        // Through the aliases, so the seed's `VIRTUALMIN_API_BULK_TIMEOUT` is checked too.
        check: |source| mesh_bulkops::config::load(source).map(drop),
        run: |rt| Box::pin(mesh_bulkops::run(rt)),
    },
];

/// The entry of `name`.
pub(crate) fn spec(name: ServiceName) -> &'static ServiceSpec {
    SERVICES.iter().find(|spec| spec.name == name).expect("every ServiceName has an entry in SERVICES")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_one_entry_and_its_own_port() {
        for name in ServiceName::value_variants() {
            assert_eq!(SERVICES.iter().filter(|s| s.name == *name).count(), 1, "{name:?}");
        }
        let mut offsets: Vec<u16> = SERVICES.iter().map(|s| s.port_offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), SERVICES.len());
    }
}
