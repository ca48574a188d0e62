//! Bounded concurrency for batch calls: at most `max_concurrent` items in
//! flight, results in request order. Items run as futures on the calling
//! task (the work is waiting on the engine, not computing), so dropping the
//! call — the caller cancelled — drops every in-flight item with it.

use std::future::Future;

use futures_util::StreamExt;
use futures_util::stream;

/// The concurrency a batch runs at: `requested`, or `default` when 0, and
/// never above `cap` (nor below 1).
#[must_use]
pub fn effective_concurrency(requested: u32, default: u32, cap: u32) -> u32 {
    let wanted = if requested == 0 { default } else { requested };
    wanted.min(cap).max(1)
}

/// Runs `action` on every item, at most `max_concurrent` at a time, and
/// returns the outputs in the order of `items`.
pub async fn run_bounded<T, R, F, Fut>(items: Vec<T>, max_concurrent: u32, action: F) -> Vec<R>
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = R>,
{
    let limit = usize::try_from(max_concurrent).unwrap_or(usize::MAX).max(1);
    stream::iter(items).map(action).buffered(limit).collect().await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn concurrency_defaults_and_caps() {
        assert_eq!(effective_concurrency(0, 5, 10), 5);
        assert_eq!(effective_concurrency(3, 5, 10), 3);
        assert_eq!(effective_concurrency(50, 5, 10), 10);
        assert_eq!(effective_concurrency(0, 20, 10), 10);
        assert_eq!(effective_concurrency(0, 0, 10), 1);
    }

    #[tokio::test]
    async fn never_exceeds_the_bound_and_keeps_order() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let outputs = run_bounded((0..40).collect(), 4, |item: u32| {
            let in_flight = in_flight.clone();
            let peak = peak.clone();
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Yield a few times so other items get to start while this one is "in flight".
                for _ in 0..=(item % 3) {
                    tokio::task::yield_now().await;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                item * 2
            }
        })
        .await;
        assert_eq!(outputs, (0..40).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 4);
    }
}
