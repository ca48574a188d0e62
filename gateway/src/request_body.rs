//! [`RequestBody`], what the gateway sends upstream: the caller's body
//! streamed through untouched, or a body kept whole so an idempotent call
//! can be sent again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a forwarded request.
    #[project = RequestBodyProjection]
    pub(crate) enum RequestBody<B> {
        /// The caller's body, frame by frame as it arrives.
        Streaming { #[pin] body: B },
        /// A copy of a body kept whole; cheap to clone (`Bytes`).
        Replay { data: Option<Bytes>, trailers: Option<HeaderMap> },
        /// The start of a body too large to keep, then the rest as it arrives.
        Prefixed { prefix: Option<Bytes>, #[pin] rest: B },
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Streaming { .. } => "Streaming",
            Self::Replay { .. } => "Replay",
            Self::Prefixed { .. } => "Prefixed",
        };
        f.debug_struct("RequestBody").field("kind", &kind).finish_non_exhaustive()
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn streaming(body: B) -> Self {
        Self::Streaming { body }
    }
}

/// A request body read whole, ready to be sent any number of times.
#[derive(Clone, Debug)]
pub(crate) struct ReplayableBody {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl ReplayableBody {
    /// A fresh copy to send.
    pub(crate) fn replay<B>(&self) -> RequestBody<B> {
        RequestBody::Replay { data: Some(self.data.clone()), trailers: self.trailers.clone() }
    }
}

/// What reading a body up to a limit gave.
pub(crate) enum Buffered<B> {
    /// The whole body.
    Whole(ReplayableBody),
    /// More than the limit: what was read, and the rest to stream.
    TooLarge(RequestBody<B>),
}

/// Reads `body` until it ends or holds more than `max_bytes`. A unary call's
/// single message is kept without copying.
pub(crate) async fn read_up_to<B>(mut body: B, max_bytes: usize) -> Result<Buffered<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size_bytes = 0;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame?.into_data() {
            Ok(data) => {
                size_bytes += data.len();
                chunks.push(data);
                if size_bytes > max_bytes {
                    return Ok(Buffered::TooLarge(RequestBody::Prefixed { prefix: Some(concat(chunks)), rest: body }));
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(frame_trailers) = frame.into_trailers() {
            trailers = Some(frame_trailers);
        }
    }
    Ok(Buffered::Whole(ReplayableBody { data: concat(chunks), trailers }))
}

fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk");
    }
    let mut joined = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        joined.extend_from_slice(&chunk);
    }
    joined.freeze()
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            RequestBodyProjection::Streaming { body } => body.poll_frame(cx),
            RequestBodyProjection::Replay { data, trailers } => {
                if let Some(data) = data.take().filter(|data| !data.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
            }
            RequestBodyProjection::Prefixed { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => rest.poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streaming { body } => body.is_end_stream(),
            Self::Replay { data, trailers } => data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none(),
            Self::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streaming { body } => body.size_hint(),
            Self::Replay { data, .. } => SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64)),
            Self::Prefixed { prefix, rest } => {
                let prefix_len = prefix.as_ref().map_or(0, |prefix| prefix.len() as u64);
                let rest_hint = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest_hint.lower() + prefix_len);
                if let Some(upper) = rest_hint.upper() {
                    hint.set_upper(upper + prefix_len);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::stream;
    use http_body_util::StreamBody;

    use super::*;

    type TestBody = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn body(chunks: &[&'static [u8]]) -> TestBody {
        let frames: Vec<_> = chunks.iter().map(|chunk| Ok(Frame::data(Bytes::from_static(chunk)))).collect();
        StreamBody::new(stream::iter(frames))
    }

    async fn collect(body: RequestBody<TestBody>) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_small_body_is_kept_whole_and_replays_the_same_bytes() {
        let Buffered::Whole(kept) = read_up_to(body(&[b"ab", b"cd"]), 4).await.unwrap() else {
            panic!("4 bytes fit a 4-byte limit");
        };
        assert_eq!(collect(kept.replay()).await, "abcd");
        assert_eq!(collect(kept.replay()).await, "abcd");
    }

    #[tokio::test]
    async fn a_large_body_streams_on_after_what_was_read() {
        let Buffered::TooLarge(rest) = read_up_to(body(&[b"ab", b"cd", b"ef"]), 3).await.unwrap() else {
            panic!("6 bytes do not fit a 3-byte limit");
        };
        assert_eq!(collect(rest).await, "abcdef");
    }
}
