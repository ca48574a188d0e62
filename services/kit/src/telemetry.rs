//! Logs and traces: human or JSON logs, OTLP trace export over gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C `traceparent` propagation.
//!
//! Every log line is written inside the RPC span, so it carries the span's
//! `correlation_id` field; secrets never reach a span because handlers are
//! instrumented with `skip_all`. A span's fields are turned into text only
//! when a line inside it is printed ([`DeferredSpanFields`]), not for every
//! span, since most RPCs print nothing at the default level.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::ops::Range;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Span, Subscriber, Value};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{DefaultFields, JsonFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
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
            .with(DeferredSpanFields::new(JsonFields::new()))
            .with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false))
            .try_init(),
        // Colour only on a terminal: escape codes are noise in a log file or a
        // collector. Deferred span fields are written without colour, so on a
        // terminal (a developer's, where cost hardly matters) they are not deferred.
        LogFormat::Human => {
            let is_terminal = std::io::stdout().is_terminal();
            registry
                .with((!is_terminal).then(|| DeferredSpanFields::new(DefaultFields::new())))
                .with(tracing_subscriber::fmt::layer().compact().with_ansi(is_terminal))
                .try_init()
        }
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(TelemetryGuard { tracer_provider })
}

/// Span fields kept as recorded until a log line needs them as text; see
/// [`DeferredSpanFields`].
#[derive(Debug, Default)]
struct RecordedFields {
    /// Every field recorded on the span, in order, with its value.
    values: Vec<(Field, RecordedValue)>,
    /// The text of the string and formatted values, end to end; a
    /// [`RecordedValue`] holds its range. One buffer, so recording a span's
    /// text fields costs one allocation, not one per field.
    text: String,
}

/// One recorded value: a number or flag as it is, text as a range of
/// [`RecordedFields::text`].
#[derive(Debug)]
enum RecordedValue {
    /// Recorded as a string (`field = "text"`), printed quoted.
    Str(Range<usize>),
    /// Recorded with `Debug` or `Display` (`?value`, `%value`, an error), kept as that text.
    Formatted(Range<usize>),
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    Bool(bool),
}

impl RecordedFields {
    fn push_text(&mut self, field: &Field, text: impl fmt::Display, kind: fn(Range<usize>) -> RecordedValue) {
        let start = self.text.len();
        // Writing into a String cannot fail.
        let _ = write!(self.text, "{text}");
        self.values.push((field.clone(), kind(start..self.text.len())));
    }

    /// Formats the fields with `fmt_fields` into `formatted`, as the fmt
    /// layer would have when they were recorded: each value is replayed as
    /// the same kind of value, in the same order.
    fn format_into<N>(&self, fmt_fields: &N, metadata: &'static Metadata<'static>, formatted: &mut FormattedFields<N>)
    where
        N: for<'writer> FormatFields<'writer> + 'static,
    {
        formatted.fields.clear();
        let field_set = metadata.fields();
        if self.values.is_empty() {
            // Still formatted: a JSON formatter writes `{}`, which the JSON line parses.
            let no_values: [(&Field, Option<&dyn Value>); 0] = [];
            let _ = fmt_fields.format_fields(formatted.as_writer(), Record::new(&field_set.value_set(&no_values)));
            return;
        }
        for (field, value) in &self.values {
            let text = |range: &Range<usize>| &self.text[range.clone()];
            let add = |formatted: &mut FormattedFields<N>, value: &dyn Value| {
                let field_value = [(field, Some(value))];
                let value_set = field_set.value_set(&field_value);
                let _ = fmt_fields.add_fields(formatted, &Record::new(&value_set));
            };
            match value {
                RecordedValue::Str(range) => add(formatted, &text(range)),
                RecordedValue::Formatted(range) => add(formatted, &tracing::field::display(text(range))),
                RecordedValue::I64(number) => add(formatted, number),
                RecordedValue::U64(number) => add(formatted, number),
                RecordedValue::I128(number) => add(formatted, number),
                RecordedValue::U128(number) => add(formatted, number),
                RecordedValue::F64(number) => add(formatted, number),
                RecordedValue::Bool(flag) => add(formatted, flag),
            }
        }
    }
}

impl Visit for RecordedFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push_text(field, format_args!("{value:?}"), RecordedValue::Formatted);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let start = self.text.len();
        self.text.push_str(value);
        self.values.push((field.clone(), RecordedValue::Str(start..self.text.len())));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push_text(field, value, RecordedValue::Formatted);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.values.push((field.clone(), RecordedValue::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.values.push((field.clone(), RecordedValue::U64(value)));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.values.push((field.clone(), RecordedValue::I128(value)));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.values.push((field.clone(), RecordedValue::U128(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.values.push((field.clone(), RecordedValue::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.values.push((field.clone(), RecordedValue::Bool(value)));
    }
}

/// Lets the `fmt` layer format a span's fields only when a log line inside
/// the span is printed, instead of when the span is created.
///
/// The `fmt` layer formats every span's fields as it opens (and appends to
/// them on every `record`), so that a line inside it can print them. Most
/// spans print nothing at the default level, yet every RPC paid for the text
/// of its `otel.name`, `rpc.*` and `correlation_id` fields: about 15,000 of
/// the gateway's instructions per call. This layer, placed just below the
/// `fmt` layer, keeps the fields as recorded and hands the `fmt` layer an
/// empty [`FormattedFields`], which the `fmt` layer takes as already done;
/// before an event is formatted, the fields of each span around it are
/// formatted from what was kept, the same text the `fmt` layer would have
/// written. `N` is the `fmt` layer's field formatter. The text is written
/// without ANSI colours, so this layer goes only with a `fmt` layer that
/// writes none.
struct DeferredSpanFields<N> {
    fmt_fields: N,
}

impl<N> DeferredSpanFields<N> {
    fn new(fmt_fields: N) -> Self {
        Self { fmt_fields }
    }
}

impl<S, N> Layer<S> for DeferredSpanFields<N>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + Send + Sync + 'static,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let Some(span) = context.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if extensions.get_mut::<FormattedFields<N>>().is_some() {
            return;
        }
        let mut recorded = RecordedFields::default();
        attributes.record(&mut recorded);
        extensions.insert(recorded);
        extensions.insert(FormattedFields::<N>::new(String::new()));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        let Some(span) = context.span(id) else { return };
        if let Some(recorded) = span.extensions_mut().get_mut::<RecordedFields>() {
            values.record(recorded);
        }
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let Some(scope) = context.event_scope(event) else { return };
        for span in scope {
            let mut extensions = span.extensions_mut();
            // Once formatted, the fields stay text: the `fmt` layer appends later records itself.
            let Some(recorded) = extensions.remove::<RecordedFields>() else { continue };
            if let Some(formatted) = extensions.get_mut::<FormattedFields<N>>() {
                recorded.format_into(&self.fmt_fields, span.metadata(), formatted);
            }
        }
    }
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
    if !headers.contains_key(crate::header_names::TRACEPARENT) {
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex, PoisonError};

    use tracing::field::Empty;
    use tracing_subscriber::fmt::format::{DefaultFields, JsonFields};

    use super::*;

    /// Where a test subscriber writes its lines.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()).expect("utf-8 lines")
        }
    }

    /// Spans as the kit opens them (text, `%` and `?` values, fields
    /// recorded later, a span inside a span, a span without fields) and
    /// lines printed inside them, before and after a record.
    fn log_inside_spans() {
        let rpc = tracing::info_span!(
            "rpc",
            otel.name = %"mesh.cache.v1.Cache/Get",
            otel.kind = "client",
            rpc.method = %"Get",
            correlation_id = %"0192-abc",
            attempt = 1_u64,
            ratio = 0.5,
            is_retry = false,
            peer = ?Some("10.0.0.1"),
            quoted = "say \"hi\"",
            rpc.grpc.status_code = Empty,
        );
        let _rpc = rpc.enter();
        tracing::info!(answer = 42, "inside the call");
        rpc.record("rpc.grpc.status_code", 14_i64);
        tracing::warn!("after the status");
        let inner = tracing::info_span!("inner", step = %"dial");
        inner.record("step", "dialled");
        inner.in_scope(|| tracing::info!("inside the inner span"));
        tracing::info_span!("bare").in_scope(|| tracing::info!("inside a span without fields"));
        rpc.record("rpc.grpc.status_code", 0_i64);
        tracing::info!("after a record that follows a line");
    }

    fn human_lines(is_deferred: bool) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let fmt_layer = tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry()
            .with(is_deferred.then(|| DeferredSpanFields::new(DefaultFields::new())))
            .with(fmt_layer);
        tracing::subscriber::with_default(subscriber, log_inside_spans);
        lines.text()
    }

    fn json_lines(is_deferred: bool) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let fmt_layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .without_time()
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry()
            .with(is_deferred.then(|| DeferredSpanFields::new(JsonFields::new())))
            .with(fmt_layer);
        tracing::subscriber::with_default(subscriber, log_inside_spans);
        lines.text()
    }

    #[test]
    fn deferred_span_fields_print_as_the_fmt_layer_prints_them() {
        let human = human_lines(true);
        assert_eq!(human, human_lines(false));
        assert_eq!(human.lines().count(), 5);
        let first = human.lines().next().expect("a first line");
        assert!(first.contains("correlation_id=0192-abc"), "{first}");
        assert!(first.contains("otel.kind=\"client\""), "{first}");
        assert!(!first.contains("rpc.grpc.status_code"), "{first}");
        let second = human.lines().nth(1).expect("a second line");
        assert!(second.contains("rpc.grpc.status_code=14"), "{second}");
        assert!(human.lines().nth(2).expect("a third line").contains(r#"step=dial step="dialled""#), "{human}");

        let json = json_lines(true);
        assert_eq!(json, json_lines(false));
        assert_eq!(json.lines().count(), 5);
        assert!(json.lines().all(|line| line.starts_with('{') && line.contains(r#""span":{"#)), "{json}");
        assert!(json.contains(r#""span":{"name":"bare"}"#), "{json}");
        assert!(json.contains(r#""correlation_id":"0192-abc""#), "{json}");
        assert!(json.contains(r#""rpc.grpc.status_code":14"#), "{json}");
    }
}
