//! Live stats feeds: one engine stats stream per running container that
//! callers asked about recently, keeping its two latest samples, so a
//! `GetStats` answers from memory instead of waiting for the engine. The
//! engine collects stats on a 1 s tick and answers a one-shot request only
//! at its next tick (measured 0.6–1.0 s on engine 20.10), which is why
//! `docker stats` itself streams. The first call for a container still
//! waits for one tick; later calls are served at once, with CPU % over the
//! engine's own interval between the two samples.
//!
//! A feed stops when nobody has asked for its container for `idle`, or when
//! its stream ends (the container stopped or was removed). At most
//! `max_feeds` run at once; beyond that, and when feeds are off
//! (`idle` of zero), callers sample one-shot as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptionsBuilder;
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::debug;

use crate::stats::ResourceUsage;

/// A sample older than this is not served: the engine sends one a second,
/// so an older one means the stream stalled.
const MAX_SAMPLE_AGE: Duration = Duration::from_secs(3);

/// The latest samples of one container.
#[derive(Debug, Default)]
struct Samples {
    previous: Option<Arc<ContainerStatsResponse>>,
    latest: Option<Arc<ContainerStatsResponse>>,
    received_at: Option<Instant>,
    ended: bool,
}

impl Samples {
    /// Usage when the samples are fresh enough (and two of them when CPU is wanted).
    fn usage(&self, need_cpu: bool) -> Option<ResourceUsage> {
        let latest = self.latest.as_deref()?;
        let fresh = self.received_at.is_some_and(|at| at.elapsed() <= MAX_SAMPLE_AGE);
        if !fresh || (need_cpu && self.previous.is_none()) {
            return None;
        }
        // Without CPU asked for, CPU stays unset, as a one-shot sample leaves it.
        let earlier = if need_cpu { self.previous.as_deref() } else { None };
        Some(ResourceUsage::from_samples(earlier, latest))
    }
}

#[derive(Debug)]
struct Feed {
    samples: watch::Receiver<Samples>,
    last_used: Arc<Mutex<Instant>>,
}

/// The running feeds, by full container id.
#[derive(Debug)]
pub(crate) struct StatsFeeds {
    idle: Duration,
    max_feeds: usize,
    feeds: Arc<Mutex<HashMap<String, Feed>>>,
}

impl StatsFeeds {
    /// Feeds that stop after `idle` without a caller; `idle` of zero turns them off.
    pub(crate) fn new(idle: Duration, max_feeds: usize) -> Self {
        Self { idle, max_feeds, feeds: Arc::default() }
    }

    /// The usage of the running container `full_id` from its feed, starting
    /// the feed when there is none and waiting up to `wait` for a usable
    /// sample. `None` tells the caller to sample one-shot: feeds off or
    /// full, the stream ended, or no sample in time.
    pub(crate) async fn usage(
        &self,
        docker: &Docker,
        full_id: &str,
        need_cpu: bool,
        wait: Duration,
    ) -> Option<ResourceUsage> {
        let mut samples = self.subscribe(docker, full_id)?;
        let waited = tokio::time::timeout(wait, async {
            loop {
                {
                    let current = samples.borrow_and_update();
                    if let Some(usage) = current.usage(need_cpu) {
                        return Some(usage);
                    }
                    if current.ended {
                        return None;
                    }
                }
                samples.changed().await.ok()?;
            }
        })
        .await;
        waited.ok().flatten()
    }

    /// A receiver of `full_id`'s samples, marking the feed used; starts it when needed.
    fn subscribe(&self, docker: &Docker, full_id: &str) -> Option<watch::Receiver<Samples>> {
        if self.idle.is_zero() {
            return None;
        }
        let mut feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(feed) = feeds.get(full_id) {
            *feed.last_used.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
            return Some(feed.samples.clone());
        }
        if feeds.len() >= self.max_feeds {
            return None;
        }
        let (sender, receiver) = watch::channel(Samples::default());
        let last_used = Arc::new(Mutex::new(Instant::now()));
        feeds.insert(full_id.to_owned(), Feed { samples: receiver.clone(), last_used: last_used.clone() });
        tokio::spawn(run_feed(docker.clone(), full_id.to_owned(), sender, last_used, self.idle, self.feeds.clone()));
        Some(receiver)
    }
}

/// Streams `full_id`'s stats into `sender` until the feed idles out or the
/// stream ends, then removes the feed.
async fn run_feed(
    docker: Docker,
    full_id: String,
    sender: watch::Sender<Samples>,
    last_used: Arc<Mutex<Instant>>,
    idle: Duration,
    feeds: Arc<Mutex<HashMap<String, Feed>>>,
) {
    let options = StatsOptionsBuilder::new().stream(true).one_shot(false).build();
    let mut stream = std::pin::pin!(docker.stats(&full_id, Some(options)));
    debug!(container_id = %full_id, "stats feed started");
    loop {
        let idle_deadline = *last_used.lock().unwrap_or_else(PoisonError::into_inner) + idle;
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(sample)) => sender.send_modify(|samples| {
                    samples.previous = samples.latest.replace(Arc::new(sample));
                    samples.received_at = Some(Instant::now());
                }),
                Some(Err(error)) => {
                    debug!(container_id = %full_id, %error, "stats feed ended by the engine");
                    break;
                }
                None => break,
            },
            () = tokio::time::sleep_until(idle_deadline.into()) => {
                let last = *last_used.lock().unwrap_or_else(PoisonError::into_inner);
                if last.elapsed() >= idle {
                    break;
                }
            }
        }
    }
    // Removed before `ended` is published, so a caller woken by it that
    // asks again starts a fresh feed rather than finding this one.
    feeds.lock().unwrap_or_else(PoisonError::into_inner).remove(&full_id);
    sender.send_modify(|samples| samples.ended = true);
    debug!(container_id = %full_id, "stats feed stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Arc<ContainerStatsResponse> {
        Arc::new(ContainerStatsResponse::default())
    }

    #[test]
    fn only_fresh_samples_are_served_and_cpu_needs_two() {
        let mut samples = Samples { latest: Some(sample()), received_at: Some(Instant::now()), ..Samples::default() };
        assert!(samples.usage(false).is_some());
        assert!(samples.usage(true).is_none(), "CPU % needs an earlier sample");
        samples.previous = Some(sample());
        assert!(samples.usage(true).is_some());
        samples.received_at = Instant::now().checked_sub(MAX_SAMPLE_AGE + Duration::from_secs(1));
        assert!(samples.usage(false).is_none(), "a stalled stream's sample is not served");
        assert!(Samples::default().usage(false).is_none());
    }

    #[test]
    fn feeds_off_or_full_leave_the_caller_to_sample() {
        // `Docker` values are only handles: nothing connects until a request.
        let docker = Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION).unwrap();
        let off = StatsFeeds::new(Duration::ZERO, 10);
        assert!(off.subscribe(&docker, "a").is_none());

        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let full = StatsFeeds::new(Duration::from_secs(60), 1);
            assert!(full.subscribe(&docker, "a").is_some());
            assert!(full.subscribe(&docker, "a").is_some(), "the same container shares its feed");
            assert!(full.subscribe(&docker, "b").is_none(), "beyond max_feeds");
        });
    }
}
