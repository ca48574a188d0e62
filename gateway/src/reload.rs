//! Hot reload. Every setting a running gateway can change is held by the
//! layer that reads it as a [`Live`] value (an `ArcSwap`: one atomic load per
//! call, no lock), and [`follow`] swaps in new values when the config file
//! changes. Connections, callers' and endpoints', stay open: a new token
//! applies to the next call on a connection already open. Rate-limit buckets
//! and retry budgets are rebuilt only when their own settings change, and an
//! endpoint whose address stays keeps its connections and latency estimate.
//! The endpoint set is also rebuilt when `dns` finds a name's addresses
//! changed; both rebuilds go through [`LiveUpstream::rebuild`], one at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use mesh_kit::{CancellationToken, ConfigWatch};
use tracing::{info, warn};

use crate::authn::AuthPolicy;
use crate::balance::{EndpointSet, Member, OutlierSettings};
use crate::config::{GatewayConfig, UpstreamUriProblem, parse_endpoint_list};
use crate::deadline::DeadlinePolicy;
use crate::dns::{ResolvedNames, authority_of, is_host_name};
use crate::error::GatewayError;
use crate::load_shed::InFlight;
use crate::message_limit::MessageLimits;
use crate::proxy::Endpoint;
use crate::rate_limit::{RateLimitPolicy, RateLimitSettings};
use crate::retry::{RetryPolicy, RetrySettings};

/// A value that reload may replace while calls read it.
pub(crate) type Live<T> = Arc<ArcSwap<T>>;

/// Wraps `value` for reload.
pub(crate) fn live<T>(value: T) -> Live<T> {
    Arc::new(ArcSwap::from_pointee(value))
}

/// How often idle peers are dropped from the anonymous rate limiter.
const RATE_LIMIT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// The live settings of one routed service.
#[derive(Debug)]
pub(crate) struct LiveUpstream {
    pub(crate) service_name: &'static str,
    pub(crate) endpoints: Live<EndpointSet>,
    pub(crate) retry: Live<RetryPolicy>,
    /// The gateway-wide [`LiveSettings::message_limits`], shared.
    pub(crate) message_limits: Live<MessageLimits>,
    /// The last addresses of the names in the upstream setting. The lock
    /// also makes rebuilds of `endpoints` (reload, re-resolution) take turns,
    /// so neither stores a set built from what the other just replaced.
    resolved: Mutex<ResolvedNames>,
}

/// Everything reload can change, as the layers hold it.
#[derive(Debug)]
pub(crate) struct LiveSettings {
    pub(crate) authn: Live<AuthPolicy>,
    pub(crate) rate_limits: Live<RateLimitPolicy>,
    pub(crate) deadlines: Live<DeadlinePolicy>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) access_log: Arc<AtomicBool>,
    /// The settings last applied, for the work that reads them outside a
    /// call (re-resolution, endpoint rebuilds).
    config: ArcSwap<GatewayConfig>,
    pub(crate) message_limits: Live<MessageLimits>,
    /// The services routed at start, in config order. Adding or removing a
    /// whole service needs a restart: reflection and health are built once.
    pub(crate) upstreams: Vec<LiveUpstream>,
}

impl LiveSettings {
    /// The settings of `config`, which `validate` has accepted.
    pub(crate) fn new(config: &GatewayConfig) -> Result<Self, GatewayError> {
        let message_limits = live(MessageLimits::from_config(config));
        let mut upstreams = Vec::new();
        for route in config.service_routes() {
            let Some(raw_endpoints) = route.upstream_uri else {
                continue;
            };
            let endpoints = endpoint_set(route.service_name, raw_endpoints, config, None, &ResolvedNames::new())
                .map_err(|problem| {
                    GatewayError::Config(mesh_kit::ConfigError::Invalid {
                        problems: vec![format!("{}: {problem}", route.upstream_field)],
                    })
                })?;
            upstreams.push(LiveUpstream {
                service_name: route.service_name,
                endpoints: live(endpoints),
                retry: live(RetryPolicy::new(&RetrySettings::from_config(config, route.service_name))),
                message_limits: Arc::clone(&message_limits),
                resolved: Mutex::new(ResolvedNames::new()),
            });
        }
        let authn = AuthPolicy::from_config(config);
        if !authn.is_enabled() {
            warn!("no tokens configured: authentication is off and every caller may call every method");
        }
        Ok(Self {
            authn: live(authn),
            rate_limits: live(RateLimitPolicy::new(&RateLimitSettings::from_config(config))),
            deadlines: live(DeadlinePolicy::from_config(config)),
            in_flight: InFlight::new(config.max_concurrent_calls),
            access_log: Arc::new(AtomicBool::new(config.access_log)),
            config: ArcSwap::from_pointee(config.clone()),
            message_limits,
            upstreams,
        })
    }

    /// The settings last applied.
    pub(crate) fn config(&self) -> Arc<GatewayConfig> {
        self.config.load_full()
    }

    /// Swaps in what changed from `previous` to `config`.
    fn apply(&self, previous: &GatewayConfig, config: &GatewayConfig) {
        self.config.store(Arc::new(config.clone()));
        self.authn.store(Arc::new(AuthPolicy::from_config(config)));
        if !self.authn.load().is_enabled() {
            warn!("no tokens configured: authentication is off and every caller may call every method");
        }
        let rate_limit_settings = RateLimitSettings::from_config(config);
        if rate_limit_settings != RateLimitSettings::from_config(previous) {
            self.rate_limits.store(Arc::new(RateLimitPolicy::new(&rate_limit_settings)));
        }
        self.deadlines.store(Arc::new(DeadlinePolicy::from_config(config)));
        self.in_flight.set_max_calls(config.max_concurrent_calls);
        self.access_log.store(config.access_log, Ordering::Relaxed);
        self.message_limits.store(Arc::new(MessageLimits::from_config(config)));
        let routes = config.service_routes();
        for upstream in &self.upstreams {
            let retry_settings = RetrySettings::from_config(config, upstream.service_name);
            if retry_settings != RetrySettings::from_config(previous, upstream.service_name) {
                upstream.retry.store(Arc::new(RetryPolicy::new(&retry_settings)));
            }
            let raw_endpoints = routes.iter().find(|route| route.service_name == upstream.service_name);
            let Some(raw_endpoints) = raw_endpoints.and_then(|route| route.upstream_uri) else {
                warn!(service = upstream.service_name, "removing a routed service needs a restart; its endpoints stay");
                continue;
            };
            if let Err(problem) = upstream.rebuild(raw_endpoints, config) {
                warn!(service = upstream.service_name, %problem, "endpoints not reloaded");
            }
        }
        for route in routes {
            let is_new = !self.upstreams.iter().any(|upstream| upstream.service_name == route.service_name);
            if is_new && route.upstream_uri.is_some() {
                warn!(service = route.service_name, "adding a routed service needs a restart");
            }
        }
    }
}

// === impl LiveUpstream ===

impl LiveUpstream {
    /// The upstream setting of this service in `config`.
    fn raw_endpoints<'config>(&self, config: &'config GatewayConfig) -> Option<&'config str> {
        let routes = config.service_routes();
        routes.iter().find(|route| route.service_name == self.service_name).and_then(|route| route.upstream_uri)
    }

    /// The host names (not IP literals) in this service's upstream setting.
    pub(crate) fn host_names(&self, config: &GatewayConfig) -> Vec<Authority> {
        let Some(raw_endpoints) = self.raw_endpoints(config) else { return Vec::new() };
        let authorities = parse_endpoint_list(raw_endpoints).unwrap_or_default();
        authorities.into_iter().filter(is_host_name).collect()
    }

    /// The authorities of the endpoints in balancing now.
    pub(crate) fn endpoint_authorities(&self) -> Vec<String> {
        self.endpoints.load().members.iter().map(|member| member.endpoint.authority().to_string()).collect()
    }

    /// Takes in a round of resolution (names that failed keep their last
    /// addresses) and rebuilds the endpoints if any address changed.
    pub(crate) fn update_resolved(&self, mut fresh: ResolvedNames, config: &GatewayConfig) -> bool {
        let Some(raw_endpoints) = self.raw_endpoints(config) else { return false };
        let mut resolved = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, addresses) in resolved.iter() {
            fresh.entry(name.clone()).or_insert_with(|| addresses.clone());
        }
        if fresh == *resolved {
            return false;
        }
        *resolved = fresh;
        drop(resolved);
        self.rebuild(raw_endpoints, config).is_ok()
    }

    /// Rebuilds the endpoint set from `raw_endpoints` and the last
    /// resolution, keeping the members whose address stays.
    pub(crate) fn rebuild(&self, raw_endpoints: &str, config: &GatewayConfig) -> Result<(), UpstreamUriProblem> {
        let resolved = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.endpoints.load_full();
        let endpoints = endpoint_set(self.service_name, raw_endpoints, config, Some(&current), &resolved)?;
        self.endpoints.store(Arc::new(endpoints));
        Ok(())
    }
}

/// The endpoint set of `raw_endpoints`, each name expanded to the addresses
/// it last resolved to (or dialled by name until it has), carrying over the
/// members of `current` whose authority stays.
fn endpoint_set(
    service_name: &'static str,
    raw_endpoints: &str,
    config: &GatewayConfig,
    current: Option<&EndpointSet>,
    resolved: &ResolvedNames,
) -> Result<EndpointSet, UpstreamUriProblem> {
    let mut authorities = Vec::new();
    for configured in parse_endpoint_list(raw_endpoints)? {
        match resolved.get(&configured) {
            Some(addresses) => authorities.extend(addresses.iter().copied().map(authority_of)),
            None => authorities.push(configured),
        }
    }
    // A name and a literal (or two names) may lead to one address; it is one endpoint.
    let mut seen = std::collections::HashSet::new();
    authorities.retain(|authority| seen.insert(authority.clone()));
    authorities.truncate(crate::config::MAX_ENDPOINTS_PER_SERVICE);
    let members = authorities
        .into_iter()
        .map(|authority| {
            let kept =
                current.and_then(|set| set.members.iter().find(|member| *member.endpoint.authority() == authority));
            match kept {
                Some(member) => Arc::clone(member),
                None => Arc::new(Member::new(Endpoint::new(service_name, authority, config))),
            }
        })
        .collect();
    Ok(EndpointSet { members, outliers: OutlierSettings::from_config(config) })
}

/// Applies every accepted change of `config` until `shutdown`; also drops
/// idle peers from the anonymous rate limiter now and then.
pub(crate) async fn follow(
    settings: Arc<LiveSettings>,
    mut config: ConfigWatch<GatewayConfig>,
    shutdown: CancellationToken,
) {
    let mut previous = config.borrow_and_update().clone();
    let mut cleanup = tokio::time::interval(RATE_LIMIT_CLEANUP_INTERVAL);
    cleanup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = cleanup.tick() => settings.rate_limits.load().forget_idle_peers(),
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = config.borrow_and_update().clone();
                settings.apply(&previous, &current);
                info!("gateway settings reloaded");
                previous = current;
            }
        }
    }
}
