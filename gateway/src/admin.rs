//! The admin port: plain HTTP/1.1 for Prometheus, `GET /metrics` in the text
//! format. Separate from the gRPC listener so it can stay private to the
//! cluster while the gateway faces callers.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_kit::CancellationToken;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::metrics::GatewayMetrics;
use crate::reload::LiveSettings;

/// The text format's content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `listener` until `shutdown`.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<GatewayMetrics>,
    settings: Arc<LiveSettings>,
    shutdown: CancellationToken,
) {
    if let Ok(local_addr) = listener.local_addr() {
        info!(%local_addr, "admin port serving /metrics");
    }
    let mut connections = JoinSet::new();
    loop {
        let (stream, _peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(accept_error) => {
                    debug!(%accept_error, "admin connection failed before it was accepted");
                    continue;
                }
            },
        };
        let metrics = Arc::clone(&metrics);
        let settings = Arc::clone(&settings);
        let service = service_fn(move |request| {
            let response = answer(&request, &metrics, &settings);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        connections.spawn(async move {
            if let Err(connection_error) = connection.await {
                debug!(%connection_error, "admin connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
}

fn answer(request: &Request<Incoming>, metrics: &GatewayMetrics, settings: &LiveSettings) -> Response<Full<Bytes>> {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        let mut not_found = Response::new(Full::new(Bytes::from_static(b"only GET /metrics is served here\n")));
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        return not_found;
    }
    let mut endpoints = Vec::new();
    for upstream in &settings.upstreams {
        for member in &upstream.endpoints.load().members {
            endpoints.push((upstream.service_name, member.endpoint.authority().to_string(), member.is_in_service()));
        }
    }
    let text = metrics.encode(settings.in_flight.current(), &endpoints);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(METRICS_CONTENT_TYPE));
    response
}
