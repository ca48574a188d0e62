//! [`GatewayConfig`]: where each mesh service's upstream listens, and the
//! transport settings of the gateway's listener and upstream connections.
//!
//! The route table — which gRPC service is served by which `<service>_upstream`
//! setting, and which descriptor set reflection shows for it — is
//! [`GatewayConfig::service_routes`], the one place a new mesh service is added.

use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use mesh_kit::config::duration_secs;
use mesh_kit::{ConfigProblem, ServiceConfig};
use serde::{Deserialize, Serialize};

/// Settings of the edge gateway, read from the `[gateway]` table of the
/// config file and from `MESH_GATEWAY_*` variables, over the defaults.
/// Durations are seconds (`2`, `0.5`) or humantime strings (`500ms`, `1m`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the Cache service (`mesh.cache.v1.Cache`) listens, as
    /// `http://host:port`, e.g. `http://127.0.0.1:50061`. Unset means the
    /// gateway does not serve Cache: its calls are answered UNIMPLEMENTED, and
    /// it is left out of health and reflection.
    pub cache_upstream: Option<String>,
    /// How long opening a connection to an upstream (TCP connect plus the
    /// HTTP/2 handshake) may take before the call fails UNAVAILABLE.
    #[serde(with = "duration_secs")]
    pub upstream_connect_timeout: Duration,
    /// HTTP/2 connections kept open to each upstream; calls are spread over
    /// them in turn. More than one keeps a connection the upstream closes
    /// (GOAWAY) from failing every call in flight, and spreads the work of
    /// framing over the cores.
    pub upstream_connections: usize,
    /// How long the health check of one upstream may take before that
    /// upstream counts as `NOT_SERVING`.
    #[serde(with = "duration_secs")]
    pub health_check_timeout: Duration,
    /// How often a health `Watch` checks the upstreams again; a message is
    /// sent only when the status changes.
    #[serde(with = "duration_secs")]
    pub health_poll_interval: Duration,
    /// Concurrent calls (HTTP/2 streams) one caller connection may have open.
    pub max_concurrent_streams: u32,
    /// Streams a caller may reset before the gateway has accepted them. Set
    /// high on purpose: a load generator or a client stopping cancels every
    /// call it has in flight at once, and a low limit makes the gateway close
    /// that caller's whole connection (GOAWAY `too_many_resets`).
    pub max_pending_accept_reset_streams: usize,
    /// Interval between HTTP/2 PINGs on caller and upstream connections, so a
    /// dead peer is noticed without waiting for TCP.
    #[serde(with = "duration_secs")]
    pub keepalive_interval: Duration,
    /// How long to wait for a PING ack before closing the connection.
    #[serde(with = "duration_secs")]
    pub keepalive_timeout: Duration,
    /// On shutdown, how long calls in flight may take to finish before their
    /// connections are cut.
    #[serde(with = "duration_secs")]
    pub shutdown_grace: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            cache_upstream: None,
            upstream_connect_timeout: Duration::from_secs(2),
            upstream_connections: 4,
            health_check_timeout: Duration::from_secs(1),
            health_poll_interval: Duration::from_secs(5),
            max_concurrent_streams: 1024,
            max_pending_accept_reset_streams: 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl ServiceConfig for GatewayConfig {
    const FILE_SECTION: &'static str = "gateway";
    const ENV_PREFIX: &'static str = "MESH_GATEWAY_";

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        for route in self.service_routes() {
            if let Some(raw_uri) = route.upstream_uri
                && let Err(problem) = parse_upstream_uri(raw_uri)
            {
                problems.push(ConfigProblem::new(route.upstream_field, problem.to_string()));
            }
        }
        ConfigProblem::check_range(&mut problems, "upstream_connections", self.upstream_connections, 1, 64);
        ConfigProblem::check_range(&mut problems, "max_concurrent_streams", self.max_concurrent_streams, 1, 1_000_000);
        ConfigProblem::check_range(
            &mut problems,
            "max_pending_accept_reset_streams",
            self.max_pending_accept_reset_streams,
            1,
            1_000_000,
        );
        // Ranges of durations are checked in seconds, the unit the settings are written in.
        for (field, value, min_secs, max_secs) in [
            ("upstream_connect_timeout", self.upstream_connect_timeout, 0.01, 60.0),
            ("health_check_timeout", self.health_check_timeout, 0.01, 60.0),
            ("health_poll_interval", self.health_poll_interval, 0.01, 3600.0),
            ("keepalive_interval", self.keepalive_interval, 1.0, 3600.0),
            ("keepalive_timeout", self.keepalive_timeout, 1.0, 600.0),
            ("shutdown_grace", self.shutdown_grace, 0.0, 3600.0),
        ] {
            ConfigProblem::check_range(&mut problems, field, value.as_secs_f64(), min_secs, max_secs);
        }
        problems
    }
}

/// One mesh service the gateway knows how to serve.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServiceRoute<'config> {
    /// The fully qualified gRPC service name, the first segment of its paths.
    pub(crate) service_name: &'static str,
    /// The encoded descriptor set reflection shows for the service.
    pub(crate) descriptor_set: &'static [u8],
    /// The setting that holds the upstream, for error messages.
    pub(crate) upstream_field: &'static str,
    /// The configured upstream, `http://host:port`; `None` when not served.
    pub(crate) upstream_uri: Option<&'config str>,
}

impl GatewayConfig {
    /// Every mesh service with its upstream setting. A new service adds a
    /// `<service>_upstream` field above and one line here.
    pub(crate) fn service_routes(&self) -> Vec<ServiceRoute<'_>> {
        vec![ServiceRoute {
            service_name: mesh_proto::cache::v1::SERVICE_NAME,
            descriptor_set: mesh_proto::cache::v1::FILE_DESCRIPTOR_SET,
            upstream_field: "cache_upstream",
            upstream_uri: self.cache_upstream.as_deref(),
        }]
    }
}

/// Why an upstream setting is not a plain `http://host:port`. The messages
/// never repeat the value, which could hold credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpstreamUriProblem {
    /// Not a URI at all.
    #[error("must be a URI like http://127.0.0.1:50061")]
    NotAUri,
    /// A scheme other than `http`, or none.
    #[error("must start with http:// (upstreams are reached over plaintext HTTP/2)")]
    NotHttp,
    /// `user:password@` in the authority.
    #[error("must not carry credentials")]
    HasCredentials,
    /// No explicit port, or no host.
    #[error("must name a host and a port, like http://127.0.0.1:50061")]
    NoHostOrPort,
    /// Anything after the authority.
    #[error("must be only http://host:port, without a path or query")]
    HasPath,
}

/// Reads an upstream setting, accepting only `http://host:port` (a trailing
/// `/` is tolerated), and returns its authority.
pub(crate) fn parse_upstream_uri(raw_uri: &str) -> Result<Authority, UpstreamUriProblem> {
    let uri: Uri = raw_uri.parse().map_err(|_| UpstreamUriProblem::NotAUri)?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(UpstreamUriProblem::NotHttp);
    }
    let authority = uri.authority().ok_or(UpstreamUriProblem::NotAUri)?;
    if authority.as_str().contains('@') {
        return Err(UpstreamUriProblem::HasCredentials);
    }
    if authority.host().is_empty() || authority.port_u16().is_none() {
        return Err(UpstreamUriProblem::NoHostOrPort);
    }
    if !matches!(uri.path_and_query().map(PathAndQuery::as_str), None | Some("" | "/")) {
        return Err(UpstreamUriProblem::HasPath);
    }
    Ok(authority.clone())
}

#[cfg(test)]
mod tests {
    use mesh_kit::ConfigSource;
    use mesh_kit::config::load;

    use super::*;

    fn load_from_env(vars: &[(&str, &str)]) -> Result<GatewayConfig, String> {
        let source = ConfigSource {
            file: None,
            env: vars.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
        };
        load::<GatewayConfig>(&source).map_err(|error| error.to_string())
    }

    fn check_uri(raw_uri: &str, expected: Result<&str, UpstreamUriProblem>) {
        let parsed = parse_upstream_uri(raw_uri);
        assert_eq!(parsed.as_ref().map(Authority::as_str), expected.as_ref().copied(), "{raw_uri}");
    }

    #[test]
    fn upstream_uris_must_be_plain_http_host_and_port() {
        check_uri("http://127.0.0.1:50061", Ok("127.0.0.1:50061"));
        check_uri("http://cache.mesh.svc:50061/", Ok("cache.mesh.svc:50061"));
        check_uri("http://[::1]:50061", Ok("[::1]:50061"));
        check_uri("https://127.0.0.1:50061", Err(UpstreamUriProblem::NotHttp));
        check_uri("127.0.0.1:50061", Err(UpstreamUriProblem::NotHttp));
        check_uri("http://127.0.0.1", Err(UpstreamUriProblem::NoHostOrPort));
        check_uri("http://:50061", Err(UpstreamUriProblem::NoHostOrPort));
        check_uri("http://user:secret@cache:50061", Err(UpstreamUriProblem::HasCredentials));
        check_uri("http://cache:50061/v1", Err(UpstreamUriProblem::HasPath));
        check_uri("http://cache:50061/?q=1", Err(UpstreamUriProblem::HasPath));
        check_uri("not a uri", Err(UpstreamUriProblem::NotAUri));
    }

    #[test]
    fn defaults_are_valid_and_route_nothing() {
        let config = load_from_env(&[]).expect("defaults are valid");
        assert_eq!(config, GatewayConfig::default());
        assert!(config.service_routes().iter().all(|route| route.upstream_uri.is_none()));
    }

    #[test]
    fn the_cache_upstream_comes_from_the_environment() {
        let config = load_from_env(&[
            ("MESH_GATEWAY_CACHE_UPSTREAM", "http://127.0.0.1:50061"),
            ("MESH_GATEWAY_UPSTREAM_CONNECT_TIMEOUT", "500ms"),
            ("MESH_GATEWAY_SHUTDOWN_GRACE", "1.5"),
        ])
        .expect("valid settings");
        let cache_route = config.service_routes()[0];
        assert_eq!(cache_route.service_name, "mesh.cache.v1.Cache");
        assert_eq!(cache_route.upstream_uri, Some("http://127.0.0.1:50061"));
        assert_eq!(config.upstream_connect_timeout, Duration::from_millis(500));
        assert_eq!(config.shutdown_grace, Duration::from_millis(1500));
    }

    #[test]
    fn a_bad_upstream_names_the_variable_but_not_the_value() {
        let error = load_from_env(&[("MESH_GATEWAY_CACHE_UPSTREAM", "https://user:hunter2@cache:1")]).unwrap_err();
        assert!(error.contains("MESH_GATEWAY_CACHE_UPSTREAM: must start with http://"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn out_of_range_settings_name_the_range() {
        let error = load_from_env(&[
            ("MESH_GATEWAY_UPSTREAM_CONNECTIONS", "0"),
            ("MESH_GATEWAY_MAX_CONCURRENT_STREAMS", "0"),
            ("MESH_GATEWAY_UPSTREAM_CONNECT_TIMEOUT", "0"),
            ("MESH_GATEWAY_KEEPALIVE_INTERVAL", "2h"),
        ])
        .unwrap_err();
        for expected in [
            "MESH_GATEWAY_UPSTREAM_CONNECTIONS: must be between 1 and 64 (got 0)",
            "MESH_GATEWAY_MAX_CONCURRENT_STREAMS: must be between 1 and 1000000 (got 0)",
            "MESH_GATEWAY_UPSTREAM_CONNECT_TIMEOUT: must be between 0.01 and 60 (got 0)",
            "MESH_GATEWAY_KEEPALIVE_INTERVAL: must be between 1 and 3600 (got 7200)",
        ] {
            assert!(error.contains(expected), "missing `{expected}` in:\n{error}");
        }
    }

    #[test]
    fn an_unknown_setting_is_refused() {
        let error = load_from_env(&[("MESH_GATEWAY_VPN_UPSTREAM", "http://127.0.0.1:1")]).unwrap_err();
        assert!(error.contains("MESH_GATEWAY_VPN_UPSTREAM:"), "{error}");
    }
}
