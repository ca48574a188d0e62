//! Entry points for the fuzz targets in `fuzz/`, not an API: the gateway's
//! route selection and deadline policy are private, and these functions are
//! the narrowest way to drive them with arbitrary paths and headers.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use mesh_kit::correlation::GRPC_TIMEOUT_HEADER;

use crate::config::GatewayConfig;
use crate::deadline::DeadlinePolicy;
use crate::route::{Destination, select_destination};

/// Where the router sends a call, with the routed service by name.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// The gateway's own health service.
    Health,
    /// The gateway's reflection, v1.
    ReflectionV1,
    /// The gateway's reflection, v1alpha.
    ReflectionV1Alpha,
    /// The upstream of this configured service.
    Upstream(String),
    /// A well-formed path to a service nobody serves.
    UnknownService(String),
    /// Not a `/<service>/<method>` path.
    MalformedPath,
}

/// Routes `path` over upstreams named `upstream_services`, as the router does.
#[must_use]
pub fn route(path: &str, upstream_services: &[&str]) -> Route {
    match select_destination(path, upstream_services, |name: &&str| *name) {
        Destination::Health => Route::Health,
        Destination::ReflectionV1 => Route::ReflectionV1,
        Destination::ReflectionV1Alpha => Route::ReflectionV1Alpha,
        Destination::Upstream(name) => Route::Upstream((*name).to_owned()),
        Destination::UnknownService { service } => Route::UnknownService(service.to_owned()),
        Destination::MalformedPath => Route::MalformedPath,
    }
}

/// The deadline budget of a call to `path` carrying `grpc_timeout` under the
/// default settings, and the longest budget those settings allow.
#[must_use]
pub fn deadline_budget(path: &str, grpc_timeout: Option<HeaderValue>) -> (Duration, Duration) {
    let config = GatewayConfig::default();
    let policy = DeadlinePolicy::from_config(&config);
    let mut headers = HeaderMap::new();
    if let Some(value) = grpc_timeout {
        headers.insert(GRPC_TIMEOUT_HEADER, value);
    }
    (policy.budget(path, &headers), config.max_deadline)
}
