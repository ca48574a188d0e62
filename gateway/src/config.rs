//! [`GatewayConfig`]: where each mesh service's endpoints listen, who may
//! call what, the limits and deadlines of calls, and the transport settings
//! of the gateway's listener and upstream connections.
//!
//! The route table — which gRPC service is served by which `<service>_upstream`
//! setting, and which descriptor set reflection shows for it — is
//! [`GatewayConfig::service_routes`], the one place a new mesh service is added.
//! Settings marked *live* below are re-read on every reload (see `reload`);
//! the others are read once at start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use mesh_kit::config::duration_secs;
use mesh_kit::{ConfigProblem, ServiceConfig};
use serde::{Deserialize, Serialize};

/// The services anyone may call when authentication is on: health, so load
/// balancers and probes need no token, and reflection, so grpcurl can list.
const DEFAULT_PUBLIC_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Settings of the edge gateway, read from the `[gateway]` table of the
/// config file and from `MESH_GATEWAY_*` variables, over the defaults.
/// Durations are seconds (`2`, `0.5`) or humantime strings (`500ms`, `1m`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the Cache service (`mesh.cache.v1.Cache`) listens: one endpoint
    /// `http://host:port`, or several separated by commas, between which
    /// calls are balanced. Unset means the gateway does not serve Cache: its
    /// calls are answered UNIMPLEMENTED, and it is left out of health and
    /// reflection. *Live* while the service stays configured.
    pub cache_upstream: Option<String>,
    /// Where the `VpnUsers` service (`mesh.vpnusers.v1.VpnUsers`) listens, as for
    /// `cache_upstream`. Unset means the gateway does not serve it.
    pub vpnusers_upstream: Option<String>,
    /// Where the `VirtualminGateway` service (`mesh.virtualmin.v1.VirtualminGateway`) listens, as for
    /// `cache_upstream`. Unset means the gateway does not serve it.
    pub virtualmin_upstream: Option<String>,
    /// Where the `DockerOps` service (`mesh.docker.v1.DockerOps`) listens, as for
    /// `cache_upstream`. Unset means the gateway does not serve it.
    pub docker_upstream: Option<String>,
    /// Where the `MemoryProfiler` service (`mesh.memory.v1.MemoryProfiler`) listens, as for
    /// `cache_upstream`. Unset means the gateway does not serve it.
    pub memory_upstream: Option<String>,
    /// Where the `BulkOps` service (`mesh.bulkops.v1.BulkOps`) listens, as for
    /// `cache_upstream`. Unset means the gateway does not serve it.
    pub bulkops_upstream: Option<String>,
    /// How long opening a connection to an upstream (TCP connect plus the
    /// HTTP/2 handshake) may take before the call fails UNAVAILABLE.
    #[serde(with = "duration_secs")]
    pub upstream_connect_timeout: Duration,
    /// HTTP/2 connections kept open to each endpoint; calls are spread over
    /// them in turn. More than one keeps a connection the upstream closes
    /// (GOAWAY) from failing every call in flight, and spreads the work of
    /// framing over the cores.
    pub upstream_connections: usize,
    /// How long the health check of one upstream may take before that
    /// upstream counts as `NOT_SERVING`.
    #[serde(with = "duration_secs")]
    pub health_check_timeout: Duration,
    /// How often a health `Watch` checks the upstreams again (a message is
    /// sent only when the status changes), and how often the gateway probes
    /// every endpoint's health itself, ejecting one that does not answer
    /// SERVING for `outlier_ejection_time`.
    #[serde(with = "duration_secs")]
    pub health_poll_interval: Duration,
    /// Concurrent calls (HTTP/2 streams) one caller connection may have open.
    pub max_concurrent_streams: u32,
    /// Largest header block (names, values and 32 bytes per field) a caller
    /// may send; a larger one is refused before it reaches any layer.
    pub max_header_list_bytes: u32,
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
    /// Callers' credentials. Empty (the default) turns authentication off:
    /// every caller may call everything, and the gateway warns at start.
    /// *Live*: a token added, removed or narrowed applies to the next call,
    /// on connections already open.
    pub tokens: Vec<TokenConfig>,
    /// Services callable without a token while authentication is on.
    /// *Live*.
    pub public_services: Vec<String>,
    /// Calls per second one caller without a token may make, counted per
    /// peer IP address; 0 means unlimited. *Live*.
    pub anonymous_rate_limit_per_second: u32,
    /// Calls a caller without a token may make at once above its rate; 0
    /// means equal to the rate. *Live*.
    pub anonymous_rate_limit_burst: u32,
    /// Calls the gateway handles at once, over all callers; one more is
    /// refused UNAVAILABLE at once instead of waiting in a queue. *Live*.
    pub max_concurrent_calls: usize,
    /// The deadline of a call that sends no `grpc-timeout`. *Live*.
    #[serde(with = "duration_secs")]
    pub default_deadline: Duration,
    /// The longest deadline a caller may ask for; longer ones are cut to
    /// this. *Live*.
    #[serde(with = "duration_secs")]
    pub max_deadline: Duration,
    /// Per-service overrides, keyed by the gRPC service name
    /// (`mesh.cache.v1.Cache`): deadlines and the idempotent methods that
    /// may be retried. *Live*.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Retries allowed, as a percentage of recent calls (the retry budget);
    /// keeps retries from multiplying the load on a struggling upstream.
    /// *Live*.
    pub retry_budget_percent: u32,
    /// Retries allowed per second whatever the budget, so a quiet gateway
    /// can still retry. *Live*.
    pub retry_min_per_second: u32,
    /// Attempts of one idempotent call, the first included; 1 disables
    /// retries. *Live*.
    pub retry_max_attempts: u32,
    /// Largest request body kept for replay; an idempotent call with a
    /// larger body is sent once. *Live*.
    pub retry_max_body_bytes: usize,
    /// Consecutive failed calls (connect failures, broken connections) after
    /// which an endpoint is left out of balancing. *Live*.
    pub outlier_consecutive_failures: u32,
    /// How long an ejected endpoint is left out before it is tried again.
    /// *Live*.
    #[serde(with = "duration_secs")]
    pub outlier_ejection_time: Duration,
    /// One `info` line per call (target `mesh_gateway::access`): service,
    /// method, status, duration, request and response bytes, peer, correlation id and
    /// caller. *Live*.
    pub access_log: bool,
    /// Largest gRPC message a caller may send, read from each message's
    /// 5-byte length prefix as it streams past (bodies are never buffered
    /// for this); a larger one is refused `RESOURCE_EXHAUSTED` and its stream
    /// reset upstream. *Live*.
    pub max_request_message_bytes: u32,
    /// Largest gRPC message an upstream may send back; a larger one ends the
    /// call `RESOURCE_EXHAUSTED` in the trailers instead. *Live*.
    pub max_response_message_bytes: u32,
    /// A caller connection with no call open for this long is closed
    /// (HTTP/2 GOAWAY, so nothing in flight is lost); 0 keeps idle
    /// connections open.
    #[serde(with = "duration_secs")]
    pub idle_timeout: Duration,
    /// PEM certificate chain the listener presents; with `tls_key_file` it
    /// turns TLS on (ALPN `h2`). Unset: plaintext h2c. Read at start.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates that sign callers' certificates; set, it turns
    /// mutual TLS on: a caller without a certificate from one of them cannot
    /// connect, and the certificate's identity may name it (see
    /// `client_certificates`). Needs `tls_cert_file`. Read at start.
    pub tls_client_ca_file: Option<PathBuf>,
    /// How long a caller has to finish the TLS handshake.
    #[serde(with = "duration_secs")]
    pub tls_handshake_timeout: Duration,
    /// Callers known by their client certificate (mutual TLS), as `tokens`
    /// are by their token: who they are, what they may call and their rate.
    /// A call with a token is named by the token; otherwise by its
    /// certificate when one entry matches it. *Live*.
    pub client_certificates: Vec<ClientCertificateConfig>,
    /// How often upstream host names are resolved again; each address a
    /// name resolves to is one endpoint (a Kubernetes headless service
    /// lists one per pod). Endpoints that disappear finish their calls in
    /// flight; new ones join balancing. IP literals are never resolved.
    #[serde(with = "duration_secs")]
    pub dns_refresh_interval: Duration,
}

/// A caller identified by its TLS client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// Who holds the certificate; names the caller in logs and metrics and
    /// keys its rate limit, like a token's `name` (the two share one namespace).
    pub name: String,
    /// The certificate identity that matches: a DNS or URI subject
    /// alternative name (`billing.mesh.internal`, `spiffe://mesh/billing`),
    /// or the subject common name.
    pub subject: String,
    /// What the caller may call, as for tokens.
    pub allow: Vec<String>,
    /// Calls per second this caller may make; 0 (the default) means unlimited.
    #[serde(default)]
    pub rate_limit_per_second: u32,
    /// Calls this caller may make at once above its rate; 0 means equal to the rate.
    #[serde(default)]
    pub rate_limit_burst: u32,
}

/// One caller credential: a bearer token or API key, stored only as its
/// SHA-256 so the config file does not hold a usable secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds the token; names the caller in logs and metrics, and keys
    /// its rate limit. Never the token itself.
    pub name: String,
    /// SHA-256 of the token as 64 hex digits, e.g. from
    /// `printf %s "$TOKEN" | sha256sum`. Callers send the token as
    /// `authorization: Bearer <token>` or `x-api-key: <token>`.
    pub sha256: String,
    /// What the token may call: `<package>.<Service>/<Method>`,
    /// `<package>.<Service>/*`, or `*` for everything.
    pub allow: Vec<String>,
    /// Calls per second this caller may make; 0 (the default) means unlimited.
    #[serde(default)]
    pub rate_limit_per_second: u32,
    /// Calls this caller may make at once above its rate; 0 means equal to the rate.
    #[serde(default)]
    pub rate_limit_burst: u32,
}

/// Settings of one routed service that override the gateway-wide ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The deadline of a call without `grpc-timeout`; unset means
    /// `default_deadline`.
    #[serde(with = "optional_duration_secs", skip_serializing_if = "Option::is_none")]
    pub default_deadline: Option<Duration>,
    /// The longest deadline; unset means `max_deadline`.
    #[serde(with = "optional_duration_secs", skip_serializing_if = "Option::is_none")]
    pub max_deadline: Option<Duration>,
    /// Methods (`Get`) that are safe to send twice, and so are retried on
    /// another endpoint when the first answers UNAVAILABLE or its connection
    /// breaks. List unary and server-streaming methods only: a request is
    /// kept whole before it is sent, so a client stream would be held back.
    pub idempotent_methods: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let cache_reads = RouteConfig {
            idempotent_methods: ["Get", "GetMany", "GetStats", "GetHealth"].map(String::from).to_vec(),
            ..RouteConfig::default()
        };
        Self {
            cache_upstream: None,
            vpnusers_upstream: None,
            virtualmin_upstream: None,
            docker_upstream: None,
            memory_upstream: None,
            bulkops_upstream: None,
            upstream_connect_timeout: Duration::from_secs(2),
            upstream_connections: 4,
            health_check_timeout: Duration::from_secs(1),
            health_poll_interval: Duration::from_secs(5),
            max_concurrent_streams: 1024,
            max_header_list_bytes: 16 * 1024,
            max_pending_accept_reset_streams: 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            tokens: Vec::new(),
            public_services: DEFAULT_PUBLIC_SERVICES.map(String::from).to_vec(),
            anonymous_rate_limit_per_second: 0,
            anonymous_rate_limit_burst: 0,
            max_concurrent_calls: 10_000,
            default_deadline: Duration::from_secs(30),
            max_deadline: Duration::from_secs(300),
            routes: BTreeMap::from([(mesh_proto::cache::v1::SERVICE_NAME.to_owned(), cache_reads)]),
            retry_budget_percent: 20,
            retry_min_per_second: 10,
            retry_max_attempts: 3,
            retry_max_body_bytes: 64 * 1024,
            outlier_consecutive_failures: 3,
            outlier_ejection_time: Duration::from_secs(5),
            access_log: true,
            max_request_message_bytes: 4 * 1024 * 1024,
            max_response_message_bytes: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(3600),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_handshake_timeout: Duration::from_secs(10),
            client_certificates: Vec::new(),
            dns_refresh_interval: Duration::from_secs(5),
        }
    }
}

/// Most endpoints one service may have; balancing remembers the endpoints a
/// call has tried in one 64-bit word.
pub(crate) const MAX_ENDPOINTS_PER_SERVICE: usize = 64;

impl ServiceConfig for GatewayConfig {
    const FILE_SECTION: &'static str = "gateway";
    const ENV_PREFIX: &'static str = "MESH_GATEWAY_";

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        for route in self.service_routes() {
            if let Some(raw_endpoints) = route.upstream_uri
                && let Err(problem) = parse_endpoint_list(raw_endpoints)
            {
                problems.push(ConfigProblem::new(route.upstream_field, problem.to_string()));
            }
        }
        ConfigProblem::check_range(&mut problems, "upstream_connections", self.upstream_connections, 1, 64);
        ConfigProblem::check_range(&mut problems, "max_concurrent_streams", self.max_concurrent_streams, 1, 1_000_000);
        ConfigProblem::check_range(&mut problems, "max_header_list_bytes", self.max_header_list_bytes, 1024, 1 << 24);
        ConfigProblem::check_range(
            &mut problems,
            "max_pending_accept_reset_streams",
            self.max_pending_accept_reset_streams,
            1,
            1_000_000,
        );
        ConfigProblem::check_range(&mut problems, "max_concurrent_calls", self.max_concurrent_calls, 1, 10_000_000);
        ConfigProblem::check_range(&mut problems, "retry_budget_percent", self.retry_budget_percent, 0, 1000);
        ConfigProblem::check_range(&mut problems, "retry_max_attempts", self.retry_max_attempts, 1, 10);
        ConfigProblem::check_range(&mut problems, "retry_max_body_bytes", self.retry_max_body_bytes, 0, 16 << 20);
        ConfigProblem::check_range(
            &mut problems,
            "outlier_consecutive_failures",
            self.outlier_consecutive_failures,
            1,
            1000,
        );
        // Ranges of durations are checked in seconds, the unit the settings are written in.
        for (field, value, min_secs, max_secs) in [
            ("upstream_connect_timeout", self.upstream_connect_timeout, 0.01, 60.0),
            ("health_check_timeout", self.health_check_timeout, 0.01, 60.0),
            ("health_poll_interval", self.health_poll_interval, 0.01, 3600.0),
            ("keepalive_interval", self.keepalive_interval, 1.0, 3600.0),
            ("keepalive_timeout", self.keepalive_timeout, 1.0, 600.0),
            ("shutdown_grace", self.shutdown_grace, 0.0, 3600.0),
            ("default_deadline", self.default_deadline, 0.001, 86_400.0),
            ("max_deadline", self.max_deadline, 0.001, 86_400.0),
            ("outlier_ejection_time", self.outlier_ejection_time, 0.0, 3600.0),
            ("idle_timeout", self.idle_timeout, 0.0, 86_400.0),
            ("tls_handshake_timeout", self.tls_handshake_timeout, 0.01, 600.0),
            ("dns_refresh_interval", self.dns_refresh_interval, 0.1, 86_400.0),
        ] {
            ConfigProblem::check_range(&mut problems, field, value.as_secs_f64(), min_secs, max_secs);
        }
        for (field, value) in [
            ("max_request_message_bytes", self.max_request_message_bytes),
            ("max_response_message_bytes", self.max_response_message_bytes),
        ] {
            ConfigProblem::check_range(&mut problems, field, value, 1024, u32::MAX);
        }
        problems.extend(crate::tls::validate(self));
        for (index, token) in self.tokens.iter().enumerate() {
            // Named by position and holder, never by digest: the field is the user's pointer to the entry.
            let field = format!("tokens[{index}] ({})", token.name);
            if token.name.is_empty() {
                problems.push(ConfigProblem::new(format!("tokens[{index}]"), "name must not be empty"));
            }
            if crate::authn::parse_sha256_hex(&token.sha256).is_none() {
                problems.push(ConfigProblem::new(field.clone(), "sha256 must be 64 hex digits"));
            }
            for pattern in &token.allow {
                if crate::authn::MethodPattern::parse(pattern).is_none() {
                    problems.push(ConfigProblem::new(
                        field.clone(),
                        format!("allow entry `{pattern}` must be `*`, `pkg.Service/*` or `pkg.Service/Method`"),
                    ));
                }
            }
            if self.tokens[..index].iter().any(|earlier| earlier.name == token.name) {
                problems.push(ConfigProblem::new(field.clone(), "name is used by another token"));
            }
        }
        problems
    }
}

/// Serde helpers for an optional duration in the style of `duration_secs`.
mod optional_duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    struct Seconds(#[serde(with = "mesh_kit::config::duration_secs")] Duration);

    #[allow(clippy::ref_option)] // serde's `with` passes a reference to the field's own type
    pub(super) fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => mesh_kit::config::duration_secs::serialize(duration, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Seconds>::deserialize(deserializer)?.map(|Seconds(duration)| duration))
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
        vec![
            ServiceRoute {
                service_name: mesh_proto::cache::v1::SERVICE_NAME,
                descriptor_set: mesh_proto::cache::v1::FILE_DESCRIPTOR_SET,
                upstream_field: "cache_upstream",
                upstream_uri: self.cache_upstream.as_deref(),
            },
            ServiceRoute {
                service_name: mesh_proto::vpnusers::v1::SERVICE_NAME,
                descriptor_set: mesh_proto::vpnusers::v1::FILE_DESCRIPTOR_SET,
                upstream_field: "vpnusers_upstream",
                upstream_uri: self.vpnusers_upstream.as_deref(),
            },
            ServiceRoute {
                service_name: mesh_proto::virtualmin::v1::SERVICE_NAME,
                descriptor_set: mesh_proto::virtualmin::v1::FILE_DESCRIPTOR_SET,
                upstream_field: "virtualmin_upstream",
                upstream_uri: self.virtualmin_upstream.as_deref(),
            },
            ServiceRoute {
                service_name: mesh_proto::docker::v1::SERVICE_NAME,
                descriptor_set: mesh_proto::docker::v1::FILE_DESCRIPTOR_SET,
                upstream_field: "docker_upstream",
                upstream_uri: self.docker_upstream.as_deref(),
            },
            ServiceRoute {
                service_name: mesh_proto::memory::v1::PROFILER_SERVICE_NAME,
                descriptor_set: mesh_proto::memory::v1::PROFILER_FILE_DESCRIPTOR_SET,
                upstream_field: "memory_upstream",
                upstream_uri: self.memory_upstream.as_deref(),
            },
            ServiceRoute {
                service_name: mesh_proto::bulkops::v1::SERVICE_NAME,
                descriptor_set: mesh_proto::bulkops::v1::FILE_DESCRIPTOR_SET,
                upstream_field: "bulkops_upstream",
                upstream_uri: self.bulkops_upstream.as_deref(),
            },
        ]
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
    /// The same endpoint twice in one list.
    #[error("must not name the same endpoint twice")]
    Repeated,
    /// More endpoints than balancing tracks.
    #[error("must name at most 64 endpoints")]
    TooMany,
}

/// Reads an upstream setting: one or more `http://host:port` separated by
/// commas, each at most once, at most [`MAX_ENDPOINTS_PER_SERVICE`].
pub(crate) fn parse_endpoint_list(raw_endpoints: &str) -> Result<Vec<Authority>, UpstreamUriProblem> {
    let mut endpoints: Vec<Authority> = Vec::new();
    for raw_uri in raw_endpoints.split(',').map(str::trim) {
        let authority = parse_upstream_uri(raw_uri)?;
        if endpoints.contains(&authority) {
            return Err(UpstreamUriProblem::Repeated);
        }
        endpoints.push(authority);
    }
    if endpoints.len() > MAX_ENDPOINTS_PER_SERVICE {
        return Err(UpstreamUriProblem::TooMany);
    }
    Ok(endpoints)
}

/// Reads one endpoint, accepting only `http://host:port` (a trailing
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
