//! Logs and traces: human or JSON logs, OTLP trace export over gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C `traceparent` propagation.
//!
//! Every log line is written inside the RPC span, so it carries the span's
//! `correlation_id` field; secrets never reach a span because handlers are
//! instrumented with `skip_all`.

use std::io::IsTerminal;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::ConfigSource;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, with the current span's fields.
    Json,
    /// Compact human-readable lines.
    Human,
}

/// Telemetry settings, read from the standard variables.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// `service.name` of exported spans (`OTEL_SERVICE_NAME` overrides).
    pub service_name: String,
    /// `MESH_LOG_FORMAT`: `json` or `human` (default).
    pub log_format: LogFormat,
    /// `RUST_LOG` directives; default `info`.
    pub log_filter: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://collector:4317`.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// Reads the settings for `default_service_name` from `source`.
    pub fn from_source(default_service_name: &str, source: &ConfigSource) -> Result<Self, String> {
        let log_format = match source.var("MESH_LOG_FORMAT").unwrap_or("human") {
            "json" => LogFormat::Json,
            "human" => LogFormat::Human,
            other => return Err(format!("MESH_LOG_FORMAT: must be `json` or `human` (got `{other}`)")),
        };
        Ok(Self {
            service_name: source.var("OTEL_SERVICE_NAME").unwrap_or(default_service_name).to_owned(),
            log_format,
            log_filter: source.var("RUST_LOG").unwrap_or("info").to_owned(),
            otlp_endpoint: source.var("OTEL_EXPORTER_OTLP_ENDPOINT").map(str::to_owned),
        })
    }
}

/// Keeps the trace exporter alive; dropping it flushes pending spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace exporter shutdown failed: {error}");
        }
    }
}

/// Installs the global subscriber and, with an endpoint, the OTLP exporter.
/// Must run inside the tokio runtime (the exporter's channel lives there).
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, String> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|e| format!("RUST_LOG: {e}"))?;

    let tracer_provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
            let resource =
                opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
            Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
        }
        None => None,
    };
    let otel_layer =
        tracer_provider.as_ref().map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("mesh")));

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let installed = match config.log_format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false))
            .try_init(),
        // Colour only on a terminal: escape codes are noise in a log file or a
        // collector, and formatting them costs every call's span.
        LogFormat::Human => registry
            .with(tracing_subscriber::fmt::layer().compact().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(TelemetryGuard { tracer_provider })
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` a child of the trace in `headers` (`traceparent`), if any.
pub fn set_parent_from_headers(span: &Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only when no OpenTelemetry layer is installed; then there is no trace to join.
    let _ = span.set_parent(parent);
}

/// Writes `span`'s trace context into `headers` as `traceparent`, so the
/// next hop joins the same trace. Without an exporter the headers are left
/// as they are, so a caller's `traceparent` passes through unchanged.
pub fn inject_context(span: &Span, headers: &mut HeaderMap) {
    let context = span.context();
    if opentelemetry::trace::TraceContextExt::span(&context).span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}
