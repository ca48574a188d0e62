//! Re-resolution of upstream host names, for Kubernetes headless services
//! and anything else whose addresses change: every `dns_refresh_interval`
//! each name in an upstream setting (`http://cache.mesh.svc:50061`) is
//! resolved again, and every address it resolves to is one endpoint. The
//! endpoint set is rebuilt only when the addresses change; endpoints that
//! stay keep their connections and latency estimates, new ones join
//! balancing, and removed ones are dropped once the calls in flight on them
//! end (each call holds its endpoint). A failed or empty resolution keeps
//! the last addresses: a DNS outage must not empty a service. IP literals
//! are never resolved; a name not resolved yet is dialled by name.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use http::uri::Authority;
use mesh_kit::CancellationToken;
use tracing::{debug, info, warn};

use crate::reload::LiveSettings;

/// The future of one resolution.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a host name and port into the addresses behind it. The gateway
/// uses the system resolver ([`SystemResolver`]); tests pass their own to
/// [`crate::run_with_resolver`].
pub trait Resolve: fmt::Debug + Send + Sync + 'static {
    /// The addresses of `host` (a name, never an IP literal) at `port`.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// The operating system's resolver (`getaddrinfo`, so `/etc/hosts` and
/// the cluster DNS alike), through tokio.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// The last addresses of each name, per upstream.
pub(crate) type ResolvedNames = HashMap<Authority, Vec<SocketAddr>>;

/// Whether `authority` names a host to resolve, rather than an IP literal.
pub(crate) fn is_host_name(authority: &Authority) -> bool {
    let host = authority.host();
    let unbracketed = host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(host);
    unbracketed.parse::<IpAddr>().is_err()
}

/// The endpoint authority of one resolved address.
pub(crate) fn authority_of(address: SocketAddr) -> Authority {
    Authority::try_from(address.to_string()).expect("a socket address is a valid authority")
}

/// Re-resolves every upstream's names until `shutdown`; the first round
/// runs at once, so names are expanded as soon as the gateway starts.
pub(crate) async fn follow(settings: Arc<LiveSettings>, resolver: Arc<dyn Resolve>, shutdown: CancellationToken) {
    loop {
        for upstream in &settings.upstreams {
            let names = upstream.host_names(&settings.config());
            if names.is_empty() {
                continue;
            }
            let mut fresh_addresses = ResolvedNames::new();
            for name in names {
                let Some(port) = name.port_u16() else { continue };
                let lookup = tokio::select! {
                    () = shutdown.cancelled() => return,
                    lookup = resolver.resolve(name.host(), port) => lookup,
                };
                match lookup {
                    Ok(mut addresses) if !addresses.is_empty() => {
                        addresses.sort_unstable();
                        addresses.dedup();
                        fresh_addresses.insert(name, addresses);
                    }
                    Ok(_) => {
                        warn!(service = upstream.service_name, %name, "name resolved to no address; keeping the last");
                    }
                    Err(error) => {
                        warn!(service = upstream.service_name, %name, %error, "cannot resolve; keeping the last addresses");
                    }
                }
            }
            if upstream.update_resolved(fresh_addresses, &settings.config()) {
                info!(service = upstream.service_name, endpoints = ?upstream.endpoint_authorities(), "upstream endpoints re-resolved");
            } else {
                debug!(service = upstream.service_name, "upstream addresses unchanged");
            }
        }
        let interval = settings.config().dns_refresh_interval;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_are_resolved() {
        let check = |raw: &str, expected: bool| assert_eq!(is_host_name(&raw.parse().unwrap()), expected, "{raw}");
        check("cache.mesh.svc.cluster.local:50061", true);
        check("localhost:50061", true);
        check("127.0.0.1:50061", false);
        check("[::1]:50061", false);
    }

    #[tokio::test]
    async fn the_system_resolver_finds_localhost() {
        let addresses = SystemResolver.resolve("localhost", 50061).await.expect("localhost resolves");
        assert!(addresses.iter().all(|address| address.ip().is_loopback() && address.port() == 50061), "{addresses:?}");
        assert!(!addresses.is_empty());
    }
}
