//! Balancing over a service's endpoints: power of two choices over
//! peak-EWMA latency, with outlier ejection.
//!
//! Each call picks two endpoints at random and takes the one with the lower
//! load, where load is the endpoint's peak-EWMA round-trip time times its
//! calls in flight plus one; a slow or busy endpoint gets less, never none.
//! An endpoint whose calls fail `outlier_consecutive_failures` times in a row
//! (refused connections, broken connections) is left out for
//! `outlier_ejection_time`; if every endpoint is out, all are tried, since
//! refusing every call would be worse than trying. A request that never left
//! the gateway (the connection was refused) goes on to another endpoint
//! whatever its method: nothing reached the first.
//!
//! # Why not `tower::balance::p2c`
//! tower's balancer needs `&mut self` and readiness polling, so sharing it
//! between connections means a `Buffer` in front, a channel hop and a task
//! per service that costs about 10 % of throughput. The endpoints here are
//! shared, lock-free to pick from (atomics and one short mutex per
//! measurement), and the set is swapped whole on reload.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Response;
use mesh_kit::RpcError;
use tonic::Code;
use tower::{BoxError, Service};
use tracing::{info, warn};

use crate::config::GatewayConfig;
use crate::proxy::{Endpoint, ProxyError, SendFailure, UpstreamBody, UpstreamRequest};
use crate::reload::Live;

/// How fast the latency estimate forgets a peak: after this long without a
/// slower call, a peak counts for about a third.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// The latency assumed of an endpoint before its first answer.
const INITIAL_RTT: Duration = Duration::from_micros(500);

/// The service answered by no endpoint.
#[derive(Debug, thiserror::Error)]
#[error("service `{service}` is unavailable")]
pub(crate) struct Unavailable {
    pub(crate) service: &'static str,
    #[source]
    pub(crate) cause: ProxyError,
}

impl RpcError for Unavailable {
    fn code(&self) -> Code {
        Code::Unavailable
    }

    fn reason(&self) -> &'static str {
        "UPSTREAM_UNAVAILABLE"
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }
}

/// When outliers are ejected, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutlierSettings {
    pub(crate) consecutive_failures: u32,
    pub(crate) ejection_time: Duration,
}

impl OutlierSettings {
    pub(crate) fn from_config(config: &GatewayConfig) -> Self {
        Self { consecutive_failures: config.outlier_consecutive_failures, ejection_time: config.outlier_ejection_time }
    }
}

/// One endpoint with what balancing knows of it.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) endpoint: Endpoint,
    load: PeakEwma,
    failures_in_a_row: AtomicU32,
    /// Nanoseconds since [`epoch`] until which the endpoint is left out.
    ejected_until_nanos: AtomicU64,
}

/// The endpoints of one service, swapped whole on reload; members whose
/// address stays are carried over with their connections and estimates.
#[derive(Debug)]
pub(crate) struct EndpointSet {
    pub(crate) members: Vec<Arc<Member>>,
    pub(crate) outliers: OutlierSettings,
}

/// Peak-EWMA of the time to response headers, in nanoseconds, and the calls
/// in flight.
#[derive(Debug)]
struct PeakEwma {
    estimate: Mutex<RttEstimate>,
    in_flight: AtomicU32,
}

#[derive(Debug)]
struct RttEstimate {
    rtt_nanos: f64,
    updated: Instant,
}

/// The zero of the ejection clock, so deadlines fit in an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

// === impl PeakEwma ===

impl PeakEwma {
    fn new() -> Self {
        let estimate = RttEstimate { rtt_nanos: duration_nanos(INITIAL_RTT), updated: Instant::now() };
        Self { estimate: Mutex::new(estimate), in_flight: AtomicU32::new(0) }
    }

    /// The cost of sending one more call here.
    fn load(&self) -> f64 {
        let rtt_nanos = self.estimate.lock().unwrap_or_else(PoisonError::into_inner).rtt_nanos;
        rtt_nanos * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }

    /// Takes in one measured round trip: a slower one replaces the estimate
    /// at once (the peak), a faster one pulls it down with the decay.
    fn observe(&self, rtt: Duration, now: Instant) {
        let rtt_nanos = duration_nanos(rtt);
        let mut estimate = self.estimate.lock().unwrap_or_else(PoisonError::into_inner);
        if rtt_nanos > estimate.rtt_nanos {
            estimate.rtt_nanos = rtt_nanos;
        } else {
            let elapsed = now.saturating_duration_since(estimate.updated);
            let kept = (-elapsed.as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
            estimate.rtt_nanos = estimate.rtt_nanos * kept + rtt_nanos * (1.0 - kept);
        }
        estimate.updated = now;
    }
}

fn duration_nanos(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

/// Counts a call in flight on a member until dropped.
struct InFlightCall<'a>(&'a Member);

impl Drop for InFlightCall<'_> {
    fn drop(&mut self) {
        self.0.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Member ===

impl Member {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            load: PeakEwma::new(),
            failures_in_a_row: AtomicU32::new(0),
            ejected_until_nanos: AtomicU64::new(0),
        }
    }

    fn is_ejected(&self, now_nanos: u64) -> bool {
        now_nanos < self.ejected_until_nanos.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is in balancing now; for metrics.
    pub(crate) fn is_in_service(&self) -> bool {
        !self.is_ejected(nanos_since_epoch(Instant::now()))
    }

    fn record_success(&self, rtt: Duration, now: Instant) {
        self.load.observe(rtt, now);
        if self.failures_in_a_row.swap(0, Ordering::Relaxed) >= 1
            && self.ejected_until_nanos.load(Ordering::Relaxed) != 0
        {
            self.ejected_until_nanos.store(0, Ordering::Relaxed);
            info!(service = self.endpoint.service_name(), endpoint = %self.endpoint.authority(), "endpoint back in balancing");
        }
    }

    /// Leaves the endpoint out for `ejection_time`: its health check did not
    /// answer SERVING. A call that succeeds on it later (once the ejection
    /// has run out) brings it back as after any ejection.
    pub(crate) fn eject_unhealthy(&self, ejection_time: Duration) {
        let now = Instant::now();
        let was_ejected = self.is_ejected(nanos_since_epoch(now));
        self.ejected_until_nanos.store(nanos_since_epoch(now + ejection_time), Ordering::Relaxed);
        // Counts as failures, so the first success afterwards logs the return and clears the ejection.
        self.failures_in_a_row.fetch_max(1, Ordering::Relaxed);
        if !was_ejected {
            warn!(
                service = self.endpoint.service_name(),
                endpoint = %self.endpoint.authority(),
                ejected_for = ?ejection_time,
                "endpoint failed its health check; ejected from balancing"
            );
        }
    }

    fn record_failure(&self, outliers: OutlierSettings, error: &ProxyError) {
        let failures = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= outliers.consecutive_failures {
            let now = Instant::now();
            let until = nanos_since_epoch(now + outliers.ejection_time);
            let was_ejected = self.is_ejected(nanos_since_epoch(now));
            self.ejected_until_nanos.store(until, Ordering::Relaxed);
            if !was_ejected {
                warn!(
                    service = self.endpoint.service_name(),
                    endpoint = %self.endpoint.authority(),
                    failures,
                    %error,
                    ejected_for = ?outliers.ejection_time,
                    "endpoint ejected from balancing"
                );
            }
        }
    }
}

/// Picks the endpoint for one attempt among those not yet `tried` (a bit
/// per index): two at random among those in balancing, or among all if none
/// is, and the one with the lower `load`. `None` when all were tried.
fn pick(loads_and_ejections: &[(f64, bool)], tried: u64, random: &mut impl FnMut(usize) -> usize) -> Option<usize> {
    let untried = |index: &usize| tried & (1 << index) == 0;
    let in_balancing = |index: &usize| untried(index) && !loads_and_ejections[*index].1;
    let indexes = 0..loads_and_ejections.len();
    let healthy_count = indexes.clone().filter(in_balancing).count();
    let candidates: &dyn Fn(&usize) -> bool = if healthy_count > 0 { &in_balancing } else { &untried };
    let candidate_count = indexes.clone().filter(candidates).count();
    let nth_candidate = |n: usize| indexes.clone().filter(candidates).nth(n).expect("n < candidate_count");
    match candidate_count {
        0 => None,
        1 => Some(nth_candidate(0)),
        _ => {
            let first = random(candidate_count);
            let mut second = random(candidate_count - 1);
            if second >= first {
                second += 1;
            }
            let (first, second) = (nth_candidate(first), nth_candidate(second));
            Some(if loads_and_ejections[second].0 < loads_and_ejections[first].0 { second } else { first })
        }
    }
}

/// Sends each call to one endpoint of a service; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Balance {
    service_name: &'static str,
    endpoints: Live<EndpointSet>,
}

impl Balance {
    pub(crate) fn new(service_name: &'static str, endpoints: Live<EndpointSet>) -> Self {
        Self { service_name, endpoints }
    }
}

/// Boxed because it loops over awaits; the one allocation of a proxied call
/// that is not retried.
pub(crate) type BalanceFuture = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, BoxError>> + Send>>;

impl Service<UpstreamRequest> for Balance {
    type Response = Response<UpstreamBody>;
    type Error = BoxError;
    type Future = BalanceFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: UpstreamRequest) -> Self::Future {
        let endpoints = self.endpoints.load_full();
        let service = self.service_name;
        Box::pin(async move { send_to_some_endpoint(&endpoints, service, request).await })
    }
}

async fn send_to_some_endpoint(
    endpoints: &EndpointSet,
    service: &'static str,
    mut request: UpstreamRequest,
) -> Result<Response<UpstreamBody>, BoxError> {
    let mut tried = 0u64;
    loop {
        let now_nanos = nanos_since_epoch(Instant::now());
        let mut loads_and_ejections = [(0.0, false); crate::config::MAX_ENDPOINTS_PER_SERVICE];
        let members = &endpoints.members;
        for (slot, member) in loads_and_ejections.iter_mut().zip(members) {
            *slot = (member.load.load(), member.is_ejected(now_nanos));
        }
        let Some(index) = pick(&loads_and_ejections[..members.len()], tried, &mut |n| fastrand::usize(..n)) else {
            unreachable!("the loop returns before every endpoint is tried");
        };
        tried |= 1 << index;
        let member = &members[index];
        member.load.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlightCall(member);
        let started = Instant::now();
        let outcome = member.endpoint.forward(request).await;
        drop(in_flight);
        match outcome {
            Ok(response) => {
                let now = Instant::now();
                member.record_success(now - started, now);
                return Ok(response);
            }
            Err(SendFailure::Unsent { request: unsent, error }) => {
                member.record_failure(endpoints.outliers, &error);
                let all_tried = tried.count_ones() as usize >= members.len();
                if all_tried {
                    return Err(Unavailable { service, cause: error }.into());
                }
                request = *unsent;
            }
            Err(SendFailure::Failed(error)) => {
                if error.is_endpoint_fault() {
                    member.record_failure(endpoints.outliers, &error);
                }
                return Err(Unavailable { service, cause: error }.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deterministic(choices: &[usize]) -> impl FnMut(usize) -> usize + '_ {
        let mut next = choices.iter();
        move |n| {
            let choice = *next.next().expect("enough choices");
            assert!(choice < n);
            choice
        }
    }

    #[test]
    fn of_two_the_lighter_is_taken() {
        let loads = [(3.0, false), (1.0, false), (2.0, false)];
        assert_eq!(pick(&loads, 0, &mut deterministic(&[0, 0])), Some(1), "0 vs 1");
        assert_eq!(pick(&loads, 0, &mut deterministic(&[0, 1])), Some(2), "0 vs 2");
        assert_eq!(pick(&loads, 0, &mut deterministic(&[2, 0])), Some(2), "2 vs 0");
    }

    #[test]
    fn ejected_and_tried_endpoints_are_left_out_until_nothing_else_is_left() {
        let loads = [(1.0, true), (9.0, false), (5.0, false)];
        assert_eq!(pick(&loads, 0b100, &mut deterministic(&[])), Some(1), "only 1 is healthy and untried");
        assert_eq!(pick(&loads, 0b110, &mut deterministic(&[])), Some(0), "all healthy ones tried: the ejected one");
        assert_eq!(pick(&loads, 0b111, &mut deterministic(&[])), None);
        let all_ejected = [(1.0, true), (2.0, true)];
        assert_eq!(pick(&all_ejected, 0, &mut deterministic(&[1, 0])), Some(0), "all ejected: all are tried");
    }

    #[test]
    fn a_peak_counts_at_once_and_fades() {
        let load = PeakEwma::new();
        let start = Instant::now();
        load.observe(Duration::from_millis(10), start);
        assert!((load.load() - 10e6).abs() < 1.0, "the peak is taken whole");
        load.observe(Duration::from_millis(1), start + EWMA_DECAY);
        let faded = load.load();
        assert!(faded < 10e6 && faded > 1e6, "{faded}");
        load.in_flight.store(3, Ordering::Relaxed);
        assert!((load.load() - faded * 4.0).abs() < 1.0, "in-flight calls multiply the cost");
    }
}
