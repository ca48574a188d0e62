//! [`UnknownMethodLayer`]: a call to a method (or service) a server does not
//! serve gets the error model's status too. tonic answers such a call itself,
//! from the generated server's catch-all arm or the router's fallback, with a
//! bare `UNIMPLEMENTED`: no message and no `ErrorInfo`, so the caller cannot
//! tell a typo in a method name from a method the service refused. This layer
//! replaces that bare answer with [`UnknownMethod`]'s status; an
//! `UNIMPLEMENTED` a handler returned (through [`crate::to_status`], so with
//! details) passes untouched.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{RpcError, to_status};
use crate::header_names;

/// A call to a path the server has no method for.
#[derive(Debug, thiserror::Error)]
#[error("`{path}` is not a method this server serves")]
pub struct UnknownMethod {
    /// The request path, `/<package>.<Service>/<Method>`.
    pub path: String,
}

impl RpcError for UnknownMethod {
    fn code(&self) -> Code {
        Code::Unimplemented
    }

    fn reason(&self) -> &'static str {
        "UNKNOWN_METHOD"
    }

    fn domain(&self) -> &'static str {
        "mesh.server"
    }
}

/// Turns tonic's bare `UNIMPLEMENTED` into [`UnknownMethod`]'s status; see
/// the module docs. It must sit inside the `CorrelationLayer`, so the status
/// carries the call's correlation id.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnknownMethodLayer;

impl<S> Layer<S> for UnknownMethodLayer {
    type Service = UnknownMethodRescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UnknownMethodRescue { inner }
    }
}

/// The service made by [`UnknownMethodLayer`].
#[derive(Clone, Debug)]
pub struct UnknownMethodRescue<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for UnknownMethodRescue<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if is_bare_unimplemented(response.headers()) {
                return Ok(to_status(&UnknownMethod { path }).into_http());
            }
            Ok(response)
        })
    }
}

/// A trailers-only `UNIMPLEMENTED` without status details: tonic's own answer
/// to an unknown path, never one built by [`crate::to_status`].
fn is_bare_unimplemented(headers: &HeaderMap) -> bool {
    const _: () = assert!(Code::Unimplemented as i32 == 12);
    headers.get(header_names::GRPC_STATUS).is_some_and(|status| status.as_bytes() == b"12")
        && !headers.contains_key(header_names::GRPC_STATUS_DETAILS)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic_types::StatusExt;
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// Answers every call with `response_headers` and an empty body, as tonic's fallback does.
    async fn answer_through_layer(response_headers: &[(&str, &str)]) -> Response<String> {
        let headers: Vec<(String, String)> =
            response_headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
        let inner = service_fn(move |_request: Request<()>| {
            let mut response = Response::new(String::new());
            for (name, value) in &headers {
                response.headers_mut().insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            async move { Ok::<_, Infallible>(response) }
        });
        let request = Request::builder().uri("/mesh.cache.v1.Cache/Nope").body(()).unwrap();
        UnknownMethodLayer.layer(inner).oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn a_bare_unimplemented_gets_error_info_naming_the_path() {
        let response = answer_through_layer(&[("grpc-status", "12"), ("content-type", "application/grpc")]).await;
        let status = tonic::Status::from_header_map(response.headers()).expect("a grpc status");
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(status.message(), "`/mesh.cache.v1.Cache/Nope` is not a method this server serves");
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo attached");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("UNKNOWN_METHOD", "mesh.server"));
    }

    #[tokio::test]
    async fn other_answers_pass_untouched() {
        for headers in [
            vec![("grpc-status", "0")],
            vec![("grpc-status", "12"), ("grpc-status-details-bin", "CAwSAA")],
            vec![("content-type", "application/grpc")],
        ] {
            let response = answer_through_layer(&headers).await;
            for (name, value) in &headers {
                assert_eq!(response.headers().get(*name).unwrap(), value, "{headers:?}");
            }
            assert_eq!(response.headers().len(), headers.len(), "{headers:?}");
        }
    }
}
