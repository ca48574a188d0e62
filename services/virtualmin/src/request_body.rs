//! `ProgressBody`: a request body that tells when the HTTP client has taken
//! its last byte, so `VIRTUALMIN_WRITE_TIMEOUT` can bound sending apart from
//! waiting for the reply. reqwest has no write timeout of its own; hyper asks a
//! body for its next chunk only when its write buffer has room again, so a
//! peer that stops reading shows here as chunks no longer taken.
//!
//! "Taken" means handed to hyper, whose buffer (a few hundred KiB) and the
//! kernel's socket buffer still lie between it and the wire, as with a socket
//! write timeout: small form bodies are taken at once, and only a body larger
//! than those buffers can stall.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;

/// Bytes handed to hyper per poll: small enough that backpressure is seen early.
const CHUNK_BYTES: usize = 16 * 1024;

/// A body of known length (so `Content-Length` is sent, as miniserv needs)
/// that flips its flag when the last chunk is taken.
#[derive(Debug)]
pub(crate) struct ProgressBody {
    remaining: Bytes,
    taken: Option<watch::Sender<bool>>,
}

impl ProgressBody {
    /// The body and a receiver that turns `true` once every byte was taken.
    pub(crate) fn new(body: Bytes) -> (Self, watch::Receiver<bool>) {
        let (sender, receiver) = watch::channel(body.is_empty());
        (Self { remaining: body, taken: Some(sender) }, receiver)
    }
}

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining.is_empty() {
            return Poll::Ready(None);
        }
        let length = self.remaining.len().min(CHUNK_BYTES);
        let chunk = self.remaining.split_to(length);
        // Signalled with the last chunk: after it hyper need not poll again (`is_end_stream`).
        if self.remaining.is_empty()
            && let Some(taken) = self.taken.take()
        {
            taken.send_replace(true);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn reports_taken_only_after_the_last_chunk() {
        let payload = Bytes::from(vec![b'x'; CHUNK_BYTES * 2 + 10]);
        let (mut body, taken) = ProgressBody::new(payload.clone());
        assert_eq!(body.size_hint().exact(), Some(payload.len() as u64));
        let mut collected = Vec::new();
        while let Some(frame) = body.frame().await {
            assert!(!*taken.borrow() || body.is_end_stream());
            collected.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert!(*taken.borrow());
        assert_eq!(collected, payload);
    }
}
