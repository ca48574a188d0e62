//! Prometheus metrics: calls by service, method and status, their latency,
//! calls in flight, retries, refusals by reason, and whether each endpoint
//! is in balancing. [`MetricsLayer`] records every call when its response
//! ends; [`GatewayMetrics::encode`] renders the text format for `/metrics`.
//!
//! Labels are bounded: a method is named only for the services the gateway
//! knows, and a call answered UNIMPLEMENTED or UNAUTHENTICATED is counted
//! under `unknown`, so a caller cannot create series at will.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Request, Response};
use mesh_kit::rpc_span::split_grpc_path;
use pin_project_lite::pin_project;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use crate::observe::{CallEnding, CallObserver, ObservedBody};

/// Latency buckets in seconds, from 100 µs (a cache hit through the
/// gateway) to 10 s.
const LATENCY_BUCKETS_SECONDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// gRPC status codes run from 0 to 16.
const GRPC_STATUS_COUNT: usize = 17;
/// The label of a service or method the gateway does not vouch for.
const UNKNOWN_LABEL: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    method: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    endpoint: String,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The handles of one method's series, found once and then reused, so a
/// call costs a map lookup and atomic increments, not label allocations.
struct MethodSeries {
    calls_by_status: [OnceLock<Counter>; GRPC_STATUS_COUNT],
    latency: Histogram,
    labels: MethodLabels,
}

/// Every metric of the gateway, and its registry.
pub(crate) struct GatewayMetrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: LatencyFamily,
    in_flight: Gauge,
    retries: Family<ServiceLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    endpoint_in_service: Family<EndpointLabels, Gauge>,
    known_services: HashSet<String>,
    series_by_path: RwLock<HashMap<String, Arc<MethodSeries>>>,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECONDS)
}

impl GatewayMetrics {
    /// The metrics, with methods labelled for `known_services` only.
    pub(crate) fn new(known_services: impl IntoIterator<Item = String>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("mesh_gateway");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("calls", "Calls answered, by service, method and gRPC status code", calls.clone());
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register("call_duration_seconds", "Time from request to the end of the response", latency.clone());
        let in_flight = Gauge::default();
        registry.register("calls_in_flight", "Calls in the gateway now", in_flight.clone());
        let retries = Family::<ServiceLabels, Counter>::default();
        registry.register("retries", "Attempts beyond the first of idempotent calls", retries.clone());
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refusals",
            "Calls the gateway answered itself with an error, by ErrorInfo reason (RATE_LIMITED, OVERLOADED, ..)",
            refusals.clone(),
        );
        let endpoint_in_service = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "endpoint_in_service",
            "1 while an endpoint takes calls, 0 while it is ejected as an outlier",
            endpoint_in_service.clone(),
        );
        Arc::new(Self {
            registry,
            calls,
            latency,
            in_flight,
            retries,
            refusals,
            endpoint_in_service,
            known_services: known_services.into_iter().collect(),
            series_by_path: RwLock::new(HashMap::new()),
        })
    }

    /// The retry counter of one service, for its retry layer.
    pub(crate) fn retries_of(&self, service: &str) -> Counter {
        self.retries.get_or_create(&ServiceLabels { service: service.to_owned() }).clone()
    }

    /// Counts a call the gateway refused itself.
    pub(crate) fn count_refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    /// Sets the gauges read at scrape time, then renders everything.
    pub(crate) fn encode(&self, in_flight: usize, endpoints: &[(&'static str, String, bool)]) -> String {
        self.in_flight.set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        for (service, endpoint, is_in_service) in endpoints {
            let labels = EndpointLabels { service: (*service).to_owned(), endpoint: endpoint.clone() };
            self.endpoint_in_service.get_or_create(&labels).set(i64::from(*is_in_service));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    fn record(&self, path: &str, ending: CallEnding, duration: Duration) {
        let is_unvouched = matches!(ending.grpc_status, 12 | 16);
        let key = match split_grpc_path(path) {
            Some((service, _)) if !is_unvouched && self.known_services.contains(service) => path,
            _ => "/unknown/unknown",
        };
        let series = self.series(key);
        let status_index = usize::from(ending.grpc_status).min(GRPC_STATUS_COUNT - 1);
        let counter = series.calls_by_status[status_index].get_or_init(|| {
            let labels = CallLabels {
                service: series.labels.service.clone(),
                method: series.labels.method.clone(),
                code: ending.grpc_status,
            };
            self.calls.get_or_create(&labels).clone()
        });
        counter.inc();
        series.latency.observe(duration.as_secs_f64());
    }

    fn series(&self, path: &str) -> Arc<MethodSeries> {
        if let Some(series) = self.series_by_path.read().unwrap_or_else(PoisonError::into_inner).get(path) {
            return Arc::clone(series);
        }
        let (service, method) = split_grpc_path(path).unwrap_or((UNKNOWN_LABEL, UNKNOWN_LABEL));
        let labels = MethodLabels { service: service.to_owned(), method: method.to_owned() };
        let latency = self.latency.get_or_create(&labels).clone();
        let mut by_path = self.series_by_path.write().unwrap_or_else(PoisonError::into_inner);
        let series = by_path.entry(path.to_owned()).or_insert_with(|| {
            Arc::new(MethodSeries { calls_by_status: std::array::from_fn(|_| OnceLock::new()), latency, labels })
        });
        Arc::clone(series)
    }
}

/// Records every call in [`GatewayMetrics`]; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct MetricsLayer {
    metrics: Arc<GatewayMetrics>,
}

impl MetricsLayer {
    pub(crate) fn new(metrics: Arc<GatewayMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics { inner, metrics: Arc::clone(&self.metrics) }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Metrics<S> {
    inner: S,
    metrics: Arc<GatewayMetrics>,
}

/// One call being measured.
pub(crate) struct CallRecord {
    metrics: Arc<GatewayMetrics>,
    path: Option<PathAndQuery>,
    started: Instant,
}

impl CallObserver for CallRecord {
    fn call_ended(self, ending: CallEnding) {
        let path = self.path.as_ref().map_or("", PathAndQuery::path);
        self.metrics.record(path, ending, self.started.elapsed());
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Metrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ObservedBody<ResBody, CallRecord>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let record = CallRecord {
            metrics: Arc::clone(&self.metrics),
            // A cheap clone: the path shares the request's bytes.
            path: request.uri().path_and_query().cloned(),
            started: Instant::now(),
        };
        ResponseFuture { inner: self.inner.call(request), record: Some(record) }
    }
}

pin_project! {
    /// Hands the record to the response body.
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        record: Option<CallRecord>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ObservedBody<ResBody, CallRecord>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let record = this.record.take();
        let (parts, body) = response.into_parts();
        let body = ObservedBody::new(body, &parts.headers, record);
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_method_and_status_with_bounded_labels() {
        let metrics = GatewayMetrics::new(["mesh.cache.v1.Cache".to_owned()]);
        let ok = CallEnding { grpc_status: 0, response_bytes: 10 };
        metrics.record("/mesh.cache.v1.Cache/Get", ok, Duration::from_micros(300));
        metrics.record("/mesh.cache.v1.Cache/Get", ok, Duration::from_micros(300));
        metrics.record("/mesh.cache.v1.Cache/Nope", CallEnding { grpc_status: 12, response_bytes: 0 }, Duration::ZERO);
        metrics.record("/evil.Service/x1", ok, Duration::ZERO);
        metrics.count_refusal("RATE_LIMITED");
        metrics.retries_of("mesh.cache.v1.Cache").inc();
        let text = metrics.encode(3, &[("mesh.cache.v1.Cache", "127.0.0.1:1".into(), false)]);
        assert!(
            text.contains(r#"mesh_gateway_calls_total{service="mesh.cache.v1.Cache",method="Get",code="0"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"mesh_gateway_calls_total{service="unknown",method="unknown",code="12"} 1"#), "{text}");
        assert!(text.contains(r#"mesh_gateway_calls_total{service="unknown",method="unknown",code="0"} 1"#), "{text}");
        assert!(!text.contains("evil"), "{text}");
        assert!(text.contains(r#"mesh_gateway_refusals_total{reason="RATE_LIMITED"} 1"#), "{text}");
        assert!(text.contains("mesh_gateway_calls_in_flight 3"), "{text}");
        assert!(text.contains(r#"mesh_gateway_retries_total{service="mesh.cache.v1.Cache"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"mesh_gateway_endpoint_in_service{service="mesh.cache.v1.Cache",endpoint="127.0.0.1:1"} 0"#
            )
        );
        assert!(text.contains("mesh_gateway_call_duration_seconds_bucket"), "{text}");
    }
}
