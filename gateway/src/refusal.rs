//! [`RefusalOr`], the response future of a layer that either refuses a call
//! on the spot with its own typed error or passes it to the service below.

use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

pin_project! {
    /// A refusal decided in `call`, or the inner service's future with its
    /// error boxed, so `rescue` can find the error's type again.
    #[project = RefusalOrProjection]
    #[allow(missing_debug_implementations)] // wraps an arbitrary future
    pub(crate) enum RefusalOr<F> {
        Refused { error: Option<BoxError> },
        Called { #[pin] inner: F },
    }
}

impl<F> RefusalOr<F> {
    /// Refuses the call with `error`; the only allocation is the error's box.
    pub(crate) fn refuse(error: impl Into<BoxError>) -> Self {
        Self::Refused { error: Some(error.into()) }
    }

    /// Passes the call on.
    pub(crate) fn call(inner: F) -> Self {
        Self::Called { inner }
    }
}

impl<F, T, E> Future for RefusalOr<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RefusalOrProjection::Refused { error } => {
                Poll::Ready(Err(error.take().expect("a refusal is polled once, then dropped")))
            }
            RefusalOrProjection::Called { inner } => inner.poll(cx).map_err(Into::into),
        }
    }
}
