//! Bounded concurrency for batch calls: at most `max_concurrent` items in
//! flight, results in request order. Items run as futures on the calling
//! task (the work is waiting on the engine, not computing), so dropping the
//! call — the caller cancelled — drops every in-flight item with it.
//!
//! A finished item frees its slot at once, whatever the order: results are
//! put back in request order only at the end. (Ordered buffering would keep
//! an early finisher's slot until every item before it finished, so one slow
//! container would hold back the start of the next ones.)

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
pub async fn run_bounded<T, R, F, Fut>(items: Vec<T>, max_concurrent: u32, mut action: F) -> Vec<R>
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = R>,
{
    let limit = usize::try_from(max_concurrent).unwrap_or(usize::MAX).max(1);
    let mut outputs_by_index: Vec<(usize, R)> = stream::iter(items.into_iter().enumerate())
        .map(|(index, item)| {
            let output = action(item);
            async move { (index, output.await) }
        })
        .buffer_unordered(limit)
        .collect()
        .await;
    outputs_by_index.sort_unstable_by_key(|(index, _)| *index);
    outputs_by_index.into_iter().map(|(_, output)| output).collect()
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

    #[tokio::test]
    async fn a_slow_item_does_not_hold_back_the_items_after_it() {
        // Item 0 finishes only once items 1 to 5 have all finished. With two
        // slots, that needs item 0's neighbour's slot to be reused four times
        // while item 0 is still in flight.
        let others_finished = Arc::new(AtomicUsize::new(0));
        let all_others_finished = Arc::new(tokio::sync::Notify::new());
        let batch = run_bounded((0..6).collect(), 2, |item: usize| {
            let others_finished = others_finished.clone();
            let all_others_finished = all_others_finished.clone();
            async move {
                if item == 0 {
                    while others_finished.load(Ordering::SeqCst) < 5 {
                        all_others_finished.notified().await;
                    }
                } else if others_finished.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
                    all_others_finished.notify_one();
                }
                item
            }
        });
        let outputs = tokio::time::timeout(std::time::Duration::from_secs(5), batch)
            .await
            .expect("item 0 waits for items 1 to 5, so they must run beside it");
        assert_eq!(outputs, [0, 1, 2, 3, 4, 5]);
    }
}
