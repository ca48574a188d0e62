//! Rate limits per caller: each token holder, and each caller named by its
//! client certificate, has its own GCRA bucket (governor), and anonymous
//! callers share a limit counted per peer IP address. A call over the limit is refused `RESOURCE_EXHAUSTED` with
//! `google.rpc.RetryInfo` saying when the next one would pass.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{Request, Response};
use mesh_kit::RpcError;
use tonic::Code;
use tower::{BoxError, Layer, Service};

use crate::authn::Identity;
use crate::config::GatewayConfig;
use crate::peer::PeerAddr;
use crate::refusal::RefusalOr;
use crate::reload::Live;

/// A call refused because its caller is over its rate.
#[derive(Debug, thiserror::Error)]
#[error("rate limit exceeded; retry in {retry_after:?}")]
pub(crate) struct RateLimited {
    /// When the next call from this caller would pass.
    pub(crate) retry_after: Duration,
}

impl RpcError for RateLimited {
    fn code(&self) -> Code {
        Code::ResourceExhausted
    }

    fn reason(&self) -> &'static str {
        "RATE_LIMITED"
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }
}

/// The limits in force. Rebuilt only when the limits themselves change, so
/// a reload that touches something else keeps every caller's bucket.
#[derive(Debug, Default)]
pub(crate) struct RateLimitPolicy {
    /// One bucket per token holder that has a limit, by holder name.
    per_identity: HashMap<Arc<str>, DefaultDirectRateLimiter>,
    /// Callers without a token, by peer IP; `None` when unlimited.
    anonymous: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// The settings a [`RateLimitPolicy`] is built from; compared on reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RateLimitSettings {
    per_identity: Vec<(String, u32, u32)>,
    anonymous: (u32, u32),
}

impl RateLimitSettings {
    pub(crate) fn from_config(config: &GatewayConfig) -> Self {
        Self {
            per_identity: config
                .tokens
                .iter()
                .map(|token| (token.name.clone(), token.rate_limit_per_second, token.rate_limit_burst))
                // Callers named by their client certificate have their own bucket, like token holders.
                .chain(
                    config
                        .client_certificates
                        .iter()
                        .map(|entry| (entry.name.clone(), entry.rate_limit_per_second, entry.rate_limit_burst)),
                )
                .collect(),
            anonymous: (config.anonymous_rate_limit_per_second, config.anonymous_rate_limit_burst),
        }
    }
}

/// The quota of `per_second` calls with a burst of `burst` (0: the rate);
/// `None` when `per_second` is 0, i.e. unlimited.
fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl RateLimitPolicy {
    pub(crate) fn new(settings: &RateLimitSettings) -> Self {
        let per_identity = settings
            .per_identity
            .iter()
            .filter_map(|(name, per_second, burst)| {
                Some((Arc::from(name.as_str()), RateLimiter::direct(quota(*per_second, *burst)?)))
            })
            .collect();
        let (per_second, burst) = settings.anonymous;
        Self { per_identity, anonymous: quota(per_second, burst).map(RateLimiter::keyed) }
    }

    /// Takes one call from the caller's bucket, or says how long it must wait.
    fn check(&self, identity: Option<&Identity>, peer: Option<&PeerAddr>) -> Result<(), RateLimited> {
        let outcome = match (identity, peer, &self.anonymous) {
            (Some(Identity(name)), _, _) => match self.per_identity.get(name) {
                Some(limiter) => limiter.check(),
                None => Ok(()),
            },
            (None, Some(PeerAddr(address)), Some(anonymous)) => anonymous.check_key(&address.ip()),
            (None, _, _) => Ok(()),
        };
        outcome
            .map_err(|not_until| RateLimited { retry_after: not_until.wait_time_from(DefaultClock::default().now()) })
    }

    /// Forgets peers whose buckets are full again, so the anonymous table
    /// does not grow with every address ever seen.
    pub(crate) fn forget_idle_peers(&self) {
        if let Some(anonymous) = &self.anonymous {
            anonymous.retain_recent();
            anonymous.shrink_to_fit();
        }
    }
}

/// Refuses calls over their caller's rate; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct RateLimitLayer {
    policy: Live<RateLimitPolicy>,
}

impl RateLimitLayer {
    pub(crate) fn new(policy: Live<RateLimitPolicy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, policy: self.policy.clone() }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub(crate) struct RateLimit<S> {
    inner: S,
    policy: Live<RateLimitPolicy>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = RefusalOr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let extensions = request.extensions();
        match self.policy.load().check(extensions.get::<Identity>(), extensions.get::<PeerAddr>()) {
            Ok(()) => RefusalOr::call(self.inner.call(request)),
            Err(limited) => RefusalOr::refuse(limited),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::config::TokenConfig;
    use crate::reload::live;

    fn settings(tokens: &[(&str, u32, u32)], anonymous: (u32, u32)) -> RateLimitSettings {
        let config = GatewayConfig {
            tokens: tokens
                .iter()
                .map(|(name, per_second, burst)| TokenConfig {
                    name: (*name).to_owned(),
                    sha256: String::new(),
                    allow: Vec::new(),
                    rate_limit_per_second: *per_second,
                    rate_limit_burst: *burst,
                })
                .collect(),
            anonymous_rate_limit_per_second: anonymous.0,
            anonymous_rate_limit_burst: anonymous.1,
            ..GatewayConfig::default()
        };
        RateLimitSettings::from_config(&config)
    }

    fn identity(name: &str) -> Identity {
        Identity(name.into())
    }

    fn peer(address: &str) -> PeerAddr {
        PeerAddr(address.parse().unwrap())
    }

    #[test]
    fn each_holder_has_its_own_bucket_of_its_burst() {
        // One call a second leaves no room for a second call within a unit test, whatever the machine's speed.
        let policy = RateLimitPolicy::new(&settings(&[("slow", 1, 2), ("free", 0, 0)], (0, 0)));
        assert!(policy.check(Some(&identity("slow")), None).is_ok());
        assert!(policy.check(Some(&identity("slow")), None).is_ok());
        let limited = policy.check(Some(&identity("slow")), None).unwrap_err();
        assert!(limited.retry_after > Duration::ZERO && limited.retry_after <= Duration::from_secs(1));
        assert_eq!(mesh_kit::RpcError::retry_after(&limited), Some(limited.retry_after));
        for _ in 0..100 {
            assert!(policy.check(Some(&identity("free")), None).is_ok(), "no limit configured");
        }
    }

    #[test]
    fn anonymous_callers_are_limited_per_ip_address() {
        let policy = RateLimitPolicy::new(&settings(&[], (1, 1)));
        assert!(policy.check(None, Some(&peer("10.0.0.1:1000"))).is_ok());
        assert!(policy.check(None, Some(&peer("10.0.0.1:2000"))).is_err(), "same address, other port");
        assert!(policy.check(None, Some(&peer("10.0.0.2:1000"))).is_ok(), "another address");
        let unlimited = RateLimitPolicy::new(&settings(&[], (0, 0)));
        for _ in 0..100 {
            assert!(unlimited.check(None, Some(&peer("10.0.0.1:1"))).is_ok());
        }
    }

    #[tokio::test]
    async fn the_layer_refuses_with_a_typed_error() {
        let policy = live(RateLimitPolicy::new(&settings(&[("slow", 1, 1)], (0, 0))));
        let mut service = RateLimitLayer::new(policy)
            .layer(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
        let request = || {
            let mut request = Request::new(());
            request.extensions_mut().insert(identity("slow"));
            request
        };
        service.ready().await.unwrap().call(request()).await.expect("within the burst");
        let refused = service.ready().await.unwrap().call(request()).await.unwrap_err();
        assert!(refused.is::<RateLimited>());
    }
}
