//! [`ObservedBody`]: a response body that tells an observer, once, how its
//! call ended — its gRPC status (from the headers of a trailers-only
//! response, else from the trailers) and the bytes sent — when the body
//! ends or is dropped. The metrics and the access log are its observers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use mesh_kit::header_names;
use pin_project_lite::pin_project;

/// The status of a call the caller stopped waiting for.
const CANCELLED: u16 = 1;
/// The status of a response that ended without one.
const UNKNOWN: u16 = 2;

/// How one call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CallEnding {
    /// The gRPC status code.
    pub(crate) grpc_status: u16,
    /// Response body bytes handed to the caller's connection.
    pub(crate) response_bytes: u64,
}

/// Told once how a call ended.
pub(crate) trait CallObserver {
    fn call_ended(self, ending: CallEnding);
}

/// The `grpc-status` in `headers`, if any.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    std::str::from_utf8(headers.get(header_names::GRPC_STATUS)?.as_bytes()).ok()?.parse().ok()
}

/// What an observed body knows until it ends; reports on drop, so a call
/// whose caller went away, or whose body hyper never polled (a
/// trailers-only response), is reported too.
struct Watch<O: CallObserver> {
    observer: Option<O>,
    grpc_status: Option<u16>,
    response_bytes: u64,
}

impl<O: CallObserver> Watch<O> {
    fn report(&mut self, status_if_unknown: u16) {
        if let Some(observer) = self.observer.take() {
            let grpc_status = self.grpc_status.unwrap_or(status_if_unknown);
            observer.call_ended(CallEnding { grpc_status, response_bytes: self.response_bytes });
        }
    }
}

impl<O: CallObserver> Drop for Watch<O> {
    fn drop(&mut self) {
        self.report(CANCELLED);
    }
}

pin_project! {
    /// See the module docs. `observer: None` observes nothing, at no cost.
    #[allow(missing_debug_implementations)] // wraps an arbitrary body
    pub(crate) struct ObservedBody<B, O: CallObserver> {
        #[pin]
        inner: B,
        watch: Watch<O>,
    }
}

impl<B, O: CallObserver> ObservedBody<B, O> {
    /// Observes the body of a response whose headers are `headers`.
    pub(crate) fn new(inner: B, headers: &HeaderMap, observer: Option<O>) -> Self {
        let grpc_status = if observer.is_some() { grpc_status(headers) } else { None };
        Self { inner, watch: Watch { observer, grpc_status, response_bytes: 0 } }
    }
}

impl<B: Body, O: CallObserver> Body for ObservedBody<B, O> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let watch = this.watch;
        if watch.observer.is_none() {
            return Poll::Ready(frame);
        }
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    watch.response_bytes += data.remaining() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    watch.grpc_status = grpc_status(trailers).or(watch.grpc_status);
                    watch.report(UNKNOWN);
                }
            }
            Some(Err(_)) | None => watch.report(UNKNOWN),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<CallEnding>>>);

    impl CallObserver for Recorded {
        fn call_ended(self, ending: CallEnding) {
            self.0.lock().unwrap().push(ending);
        }
    }

    fn headers(status: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(status) = status {
            headers.insert("grpc-status", status.parse().unwrap());
        }
        headers
    }

    #[tokio::test]
    async fn the_status_comes_from_the_trailers_with_the_bytes_sent() {
        let recorded = Recorded::default();
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"12345"))),
            Ok(Frame::trailers(headers(Some("5")))),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let observed = ObservedBody::new(body, &HeaderMap::new(), Some(recorded.clone()));
        observed.collect().await.unwrap();
        assert_eq!(*recorded.0.lock().unwrap(), [CallEnding { grpc_status: 5, response_bytes: 5 }]);
    }

    #[test]
    fn a_trailers_only_response_is_reported_when_dropped_and_an_abandoned_one_is_cancelled() {
        let recorded = Recorded::default();
        drop(ObservedBody::new(Full::new(Bytes::new()), &headers(Some("16")), Some(recorded.clone())));
        drop(ObservedBody::new(Full::new(Bytes::new()), &headers(None), Some(recorded.clone())));
        let endings: Vec<u16> = recorded.0.lock().unwrap().iter().map(|ending| ending.grpc_status).collect();
        assert_eq!(endings, [16, CANCELLED]);
    }
}
