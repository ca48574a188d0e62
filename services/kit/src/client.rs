//! Service-to-service calls: a lazily connected channel wrapped in
//! [`OutboundContext`], which stamps each outgoing request with the current
//! call's correlation id, trace context and remaining deadline, so the next
//! hop logs under the same id, joins the same trace and stops when the
//! original caller would have stopped waiting.

use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tonic::transport::{Channel, Endpoint};
use tower_layer::Layer;
use tower_service::Service;

use crate::correlation::{self, CallContext};
use crate::header_names;
use crate::telemetry;

/// A channel that propagates the call context; pass it to generated clients.
pub type MeshChannel = OutboundContext<Channel>;

/// Creates a channel to `uri` (`http://host:port`) that connects on first use.
pub fn connect_lazy(uri: &str, connect_timeout: Duration) -> Result<MeshChannel, tonic::transport::Error> {
    let channel = Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(OutboundContextLayer.layer(channel))
}

/// Adds the call context to outgoing requests; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutboundContextLayer;

impl<S> Layer<S> for OutboundContextLayer {
    type Service = OutboundContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OutboundContext { inner }
    }
}

/// The service made by [`OutboundContextLayer`].
#[derive(Clone, Debug)]
pub struct OutboundContext<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for OutboundContext<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        stamp_call_context(request.headers_mut());
        self.inner.call(request)
    }
}

/// Writes the current call's correlation id, trace context and remaining
/// deadline into `headers`. A deadline already in `headers` is only ever
/// shortened, never extended.
pub fn stamp_call_context(headers: &mut http::HeaderMap) {
    let Some(context) = stamp_trace_and_correlation_id(headers) else {
        return;
    };
    if let Some(remaining) = context.remaining() {
        let existing = headers
            .get(header_names::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(correlation::parse_grpc_timeout);
        let budget = existing.map_or(remaining, |e| e.min(remaining));
        headers.insert(header_names::GRPC_TIMEOUT, correlation::grpc_timeout_value(budget));
    }
}

/// [`stamp_call_context`] without the deadline, for a hop that computes the
/// budget it forwards itself (the gateway); returns the call's context.
pub fn stamp_trace_and_correlation_id(headers: &mut http::HeaderMap) -> Option<CallContext> {
    telemetry::inject_context(&tracing::Span::current(), headers);
    let context = correlation::current()?;
    headers.insert(header_names::CORRELATION_ID, context.correlation_id.header_value());
    Some(context)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use http::HeaderValue;

    use crate::correlation::{CORRELATION_ID_HEADER, CorrelationId, GRPC_TIMEOUT_HEADER};

    #[tokio::test]
    async fn the_call_context_is_stamped_and_the_deadline_only_shrinks() {
        let context = CallContext {
            correlation_id: CorrelationId::parse("corr-7").unwrap(),
            deadline: Some(Instant::now() + Duration::from_secs(2)),
        };
        let headers = correlation::scope(context, async {
            let mut headers = http::HeaderMap::new();
            headers.insert(GRPC_TIMEOUT_HEADER, HeaderValue::from_static("10S"));
            stamp_call_context(&mut headers);
            headers
        })
        .await;
        assert_eq!(headers[CORRELATION_ID_HEADER], "corr-7");
        let budget = correlation::parse_grpc_timeout(headers[GRPC_TIMEOUT_HEADER].to_str().unwrap()).unwrap();
        assert!(budget <= Duration::from_secs(2) && budget > Duration::from_secs(1), "{budget:?}");
    }

    #[test]
    fn outside_a_call_nothing_is_added() {
        let mut headers = http::HeaderMap::new();
        stamp_call_context(&mut headers);
        assert!(headers.is_empty());
    }
}
