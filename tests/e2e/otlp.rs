//! Traces over OTLP: a receiver started by the test (a tonic server from the
//! `opentelemetry-proto` crate) gets the gateway's span and the cache's span
//! of one call, in one trace, both carrying the correlation id.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_proto::cache::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio_stream::wrappers::TcpListenerStream;

use crate::harness::{TestMesh, with_correlation_id};

/// Collects every exported span.
#[derive(Clone, Default)]
pub(crate) struct SpanSink {
    pub(crate) spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for SpanSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC trace receiver on a free port, and what it collects.
pub(crate) async fn start_receiver() -> (SocketAddr, SpanSink) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = SpanSink::default();
    let service = TraceServiceServer::new(sink.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("otlp receiver serves");
    });
    (addr, sink)
}

fn string_attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(text) => Some(text.as_str()),
        _ => None,
    })
}

#[tokio::test]
async fn gateway_and_cache_spans_share_one_trace_and_the_correlation_id() {
    let (receiver_addr, sink) = start_receiver().await;
    let endpoint = format!("http://{receiver_addr}");
    let mesh = TestMesh::start_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info"),
    ])
    .await;
    let mut cache = mesh.cache().await;
    cache.get(with_correlation_id(pb::GetRequest { key: "traced".into() }, "otlp-corr-1")).await.unwrap();

    let matching = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let found: Vec<Span> = sink
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| {
                    s.name == "mesh.cache.v1.Cache/Get" && string_attribute(s, "correlation_id") == Some("otlp-corr-1")
                })
                .cloned()
                .collect();
            if found.len() >= 2 {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both spans are exported");

    let trace_ids: std::collections::HashSet<&Vec<u8>> = matching.iter().map(|s| &s.trace_id).collect();
    assert_eq!(trace_ids.len(), 1, "gateway and cache spans share one trace: {matching:?}");
    let gateway_span = matching.iter().find(|s| s.parent_span_id.is_empty()).expect("the gateway span is the root");
    let cache_span =
        matching.iter().find(|s| s.parent_span_id == gateway_span.span_id).expect("the cache span is its child");
    assert_eq!(string_attribute(cache_span, "rpc.service"), Some("mesh.cache.v1.Cache"));
}
