//! `LeaseTable`: single-flight leases for cache-aside reads.
//! On a miss the first caller gets a lease and is expected to load the value
//! from its source of truth and set it with the lease id; callers arriving while
//! the lease is live wait for that value instead of stampeding the source. A
//! lease that expires unfilled (its holder died) passes to the next caller.
//! Values themselves live in [`CacheStore`]; this table holds only leases.
//!
//! Deadlines run on tokio's clock, so tests can pause time; the instants in the
//! public API are `std::time::Instant`, like the store's.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::CacheError;
use crate::store::{CacheStore, CachedValue};

/// Lease lifetime when the caller passes zero.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// Longest lease granted; longer requests are cut to this. A loader slower than
/// this should not hold every other reader of the key hostage.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(5 * 60);

/// Longest a caller waits for someone else's lease; longer requests are cut to
/// this, so a waiting task stays bounded whatever the adapter passes through.
pub const MAX_LEASE_WAIT: Duration = MAX_LEASE_TTL;

/// Default cap on outstanding leases, one per key being loaded.
pub const DEFAULT_MAX_OUTSTANDING_LEASES: usize = 100_000;

/// Upper bound on the back-off suggested to a waiter that timed out.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Independent locks over the lease map, so unrelated keys rarely contend.
const LEASE_SHARDS: usize = 16;

/// The result of [`LeaseTable::get_or_lease`].
#[derive(Debug, Clone)]
pub enum LeaseOutcome {
    /// The value was in the cache.
    Hit(CachedValue),
    /// The caller holds the lease: load the value and set it with `lease_id`
    /// before `lease_expires_at`, or release the lease.
    Leased { lease_id: String, lease_expires_at: std::time::Instant },
    /// Another caller held the lease; the caller waited and got its value.
    Filled(CachedValue),
    /// Another caller still holds the lease after `max_wait`; try again later.
    RetryLater { retry_after: Duration },
}

/// Outstanding leases, keyed by cache key. `Send + Sync`; share it through an `Arc`.
#[derive(Debug)]
pub struct LeaseTable {
    shards: Box<[Mutex<LeaseMap>]>,
    hasher: RandomState,
    /// Leases across all shards, kept beside the maps so the cap is checked
    /// without locking every shard.
    outstanding: AtomicUsize,
    max_outstanding: usize,
}

type LeaseMap = HashMap<Arc<str>, Lease>;

#[derive(Debug)]
struct Lease {
    id: String,
    expires_at: Instant,
    /// Never sent on: waiters wake when the lease leaves the map and this sender drops.
    settled_tx: watch::Sender<()>,
}

impl LeaseTable {
    /// Builds an empty table admitting at most `max_outstanding` leases.
    #[must_use]
    pub fn new(max_outstanding: usize) -> Self {
        let shards = (0..LEASE_SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self { shards, hasher: RandomState::new(), outstanding: AtomicUsize::new(0), max_outstanding }
    }

    /// Returns the value under `key`, or a lease to load it, or waits up to
    /// `max_wait` for another caller's lease to be filled. A zero `lease_ttl`
    /// means [`DEFAULT_LEASE_TTL`]; it is capped at [`MAX_LEASE_TTL`] and
    /// `max_wait` at [`MAX_LEASE_WAIT`], whatever the adapter let through.
    pub async fn get_or_lease(
        &self,
        store: &CacheStore,
        key: &str,
        lease_ttl: Duration,
        max_wait: Duration,
    ) -> Result<LeaseOutcome, CacheError> {
        check_key(store, key)?;
        if let Some(found) = store.get(key) {
            return Ok(LeaseOutcome::Hit(found));
        }
        let lease_ttl = if lease_ttl.is_zero() { DEFAULT_LEASE_TTL } else { lease_ttl.min(MAX_LEASE_TTL) };
        let deadline = Instant::now() + max_wait.min(MAX_LEASE_WAIT);
        let mut waited = false;
        loop {
            let (mut settled_rx, lease_expires_at) = {
                let mut leases = self.lock_shard(key);
                // Checked again under the lock: `fulfil` stores the value and drops
                // the lease under this same lock, so a value set since the last
                // look is visible here and no caller takes a lease on a filled key.
                if let Some(found) = store.get_uncounted(key, std::time::Instant::now()) {
                    return Ok(if waited { LeaseOutcome::Filled(found) } else { LeaseOutcome::Hit(found) });
                }
                let now = Instant::now();
                match leases.get(key) {
                    Some(lease) if lease.expires_at > now => {
                        if now >= deadline {
                            let retry_after = (lease.expires_at - now).min(MAX_RETRY_AFTER);
                            return Ok(LeaseOutcome::RetryLater { retry_after });
                        }
                        // Subscribed before the lock is released, so a fill in
                        // between still wakes this waiter.
                        (lease.settled_tx.subscribe(), lease.expires_at)
                    }
                    _ => return self.grant(&mut leases, key, lease_ttl, now),
                }
            };
            waited = true;
            // Wakes when the lease is filled, released or purged (the sender
            // drops), at the lease's expiry (to take over from a dead holder) or
            // at the caller's deadline; the loop then looks again.
            let wake_at = deadline.min(lease_expires_at);
            let _settled_or_timed_out = tokio::time::timeout_at(wake_at, settled_rx.changed()).await;
        }
    }

    /// Grants a fresh lease on `key`, replacing an expired one. The caller holds the shard lock.
    fn grant(
        &self,
        leases: &mut LeaseMap,
        key: &str,
        lease_ttl: Duration,
        now: Instant,
    ) -> Result<LeaseOutcome, CacheError> {
        if !leases.contains_key(key) {
            self.reserve_slot(leases, now)?;
        }
        let lease_id = uuid::Uuid::now_v7().to_string();
        let lease_expires_at = now + lease_ttl;
        let (settled_tx, _) = watch::channel(());
        // Replacing an expired lease drops its sender, waking anyone still waiting on it.
        leases.insert(Arc::from(key), Lease { id: lease_id.clone(), expires_at: lease_expires_at, settled_tx });
        Ok(LeaseOutcome::Leased { lease_id, lease_expires_at: lease_expires_at.into_std() })
    }

    /// Counts one more outstanding lease, purging this shard's expired leases
    /// first if the table is full.
    fn reserve_slot(&self, leases: &mut LeaseMap, now: Instant) -> Result<(), CacheError> {
        if self.outstanding.load(Ordering::Relaxed) >= self.max_outstanding {
            self.purge_locked(leases, now);
        }
        let previous = self.outstanding.fetch_add(1, Ordering::Relaxed);
        if previous >= self.max_outstanding {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
            return Err(CacheError::TooManyLeases { max: self.max_outstanding });
        }
        Ok(())
    }

    /// Stores a value, the way every Set reaches the store. With `lease_id`,
    /// the set is accepted only while that lease is live on `key`; otherwise it
    /// fails with `LeaseNotFound` and nothing is stored. Without one, any
    /// lease on `key` is cancelled, since its waiters can now read the value.
    /// Either way, on success the waiters wake and read the new value.
    pub fn fulfil(
        &self,
        store: &CacheStore,
        key: &str,
        lease_id: Option<&str>,
        value: Bytes,
        ttl: Duration,
        tags: Vec<String>,
    ) -> Result<(), CacheError> {
        // Held across the store write so a concurrent `get_or_lease` sees either
        // the lease or the value, never neither.
        let mut leases = self.lock_shard(key);
        if let Some(lease_id) = lease_id {
            let now = Instant::now();
            let holds_live_lease = leases.get(key).is_some_and(|lease| lease.id == lease_id && lease.expires_at > now);
            if !holds_live_lease {
                return Err(CacheError::LeaseNotFound { key: key.to_owned() });
            }
        }
        // On a rejected value the lease stays, so its holder can retry with a valid one.
        store.set(key, value, ttl, tags)?;
        if leases.remove(key).is_some() {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Gives up the lease `lease_id` on `key`, waking its waiters so one of them
    /// takes a new lease. Fails with `LeaseNotFound` if that lease is not held,
    /// for instance because it was filled, cancelled or taken over.
    pub fn release(&self, key: &str, lease_id: &str) -> Result<(), CacheError> {
        let mut leases = self.lock_shard(key);
        if leases.get(key).is_none_or(|lease| lease.id != lease_id) {
            return Err(CacheError::LeaseNotFound { key: key.to_owned() });
        }
        leases.remove(key);
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Drops every lease expired at `now`, waking its waiters. Returns how many.
    pub fn purge_expired(&self, now: std::time::Instant) -> usize {
        let now = Instant::from_std(now);
        let mut purged = 0;
        for shard in &self.shards {
            let mut leases = shard.lock().unwrap_or_else(PoisonError::into_inner);
            purged += self.purge_locked(&mut leases, now);
        }
        purged
    }

    /// Returns the number of outstanding leases, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Reports whether no lease is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn purge_locked(&self, leases: &mut LeaseMap, now: Instant) -> usize {
        let before = leases.len();
        leases.retain(|_, lease| lease.expires_at > now);
        let purged = before - leases.len();
        self.outstanding.fetch_sub(purged, Ordering::Relaxed);
        purged
    }

    fn lock_shard(&self, key: &str) -> MutexGuard<'_, LeaseMap> {
        let shard_index = usize::try_from(self.hasher.hash_one(key) % LEASE_SHARDS as u64)
            .expect("a shard index is below LEASE_SHARDS");
        // A panic under this lock is already a reported bug; recovering the guard
        // keeps leases working instead of turning one panic into one per call.
        self.shards[shard_index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the callers waiting on the lease for `key`.
    #[cfg(test)]
    fn waiting(&self, key: &str) -> usize {
        self.lock_shard(key).get(key).map_or(0, |lease| lease.settled_tx.receiver_count())
    }
}

impl Default for LeaseTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_OUTSTANDING_LEASES)
    }
}

/// Rejects keys the store would refuse, before they take a place in the lease map.
fn check_key(store: &CacheStore, key: &str) -> Result<(), CacheError> {
    let max_key_bytes = store.limits().max_key_bytes;
    if key.is_empty() {
        return Err(CacheError::EmptyKey);
    }
    if key.len() > max_key_bytes {
        return Err(CacheError::KeyTooLarge { size_bytes: key.len(), max_bytes: max_key_bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreLimits;

    const MINUTE: Duration = Duration::from_secs(60);

    fn store() -> Arc<CacheStore> {
        Arc::new(CacheStore::new(StoreLimits {
            memory_budget_bytes: 1 << 20,
            max_entries: 10_000,
            max_key_bytes: 256,
            max_value_bytes: 1024,
            max_tags_per_entry: 4,
            max_tag_bytes: 32,
        }))
    }

    fn lease_id(outcome: &LeaseOutcome) -> &str {
        match outcome {
            LeaseOutcome::Leased { lease_id, .. } => lease_id,
            other => panic!("expected Leased, got {other:?}"),
        }
    }

    /// The lease's lifetime as granted; exact because the tests' clock is paused.
    fn lease_expires_in(outcome: &LeaseOutcome) -> Duration {
        match outcome {
            LeaseOutcome::Leased { lease_expires_at, .. } => {
                lease_expires_at.saturating_duration_since(Instant::now().into_std())
            }
            other => panic!("expected Leased, got {other:?}"),
        }
    }

    fn filled_value(outcome: &LeaseOutcome) -> &Bytes {
        match outcome {
            LeaseOutcome::Filled(found) => &found.value,
            other => panic!("expected Filled, got {other:?}"),
        }
    }

    async fn until_waiting(table: &LeaseTable, key: &str, waiters: usize) {
        while table.waiting(key) < waiters {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_get_one_lease_and_the_rest_wait_for_its_value() {
        let store = store();
        let table = Arc::new(LeaseTable::default());
        let (outcome_tx, mut outcome_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..50 {
            let (store, table, outcome_tx) = (store.clone(), table.clone(), outcome_tx.clone());
            tokio::spawn(async move {
                let outcome = table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, MINUTE).await;
                outcome_tx.send(outcome).expect("the test is listening");
            });
        }
        // Nobody can finish before the lease is filled except the lease holder.
        let first = outcome_rx.recv().await.expect("an outcome").expect("no error");
        let lease_id = lease_id(&first).to_owned();
        until_waiting(&table, "k", 49).await;

        table
            .fulfil(&store, "k", Some(&lease_id), Bytes::from_static(b"loaded"), MINUTE, Vec::new())
            .expect("the holder fills its lease");
        for _ in 0..49 {
            let outcome = outcome_rx.recv().await.expect("an outcome").expect("no error");
            assert_eq!(filled_value(&outcome), &Bytes::from_static(b"loaded"));
        }
        assert!(table.is_empty());
        let after = table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, MINUTE).await.expect("no error");
        assert!(matches!(after, LeaseOutcome::Hit(_)), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_lease_id_is_refused_and_nothing_is_stored() {
        let store = store();
        let table = LeaseTable::default();
        let leased = table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, MINUTE).await.expect("no error");
        let error = table
            .fulfil(&store, "k", Some("not-a-lease"), Bytes::from_static(b"v"), MINUTE, Vec::new())
            .expect_err("unknown lease");
        assert_eq!(error, CacheError::LeaseNotFound { key: "k".to_owned() });
        assert!(store.get("k").is_none());
        let error = table
            .fulfil(&store, "other", Some(lease_id(&leased)), Bytes::from_static(b"v"), MINUTE, Vec::new())
            .expect_err("lease belongs to another key");
        assert_eq!(error.reason(), "LEASE_NOT_FOUND");
        assert!(store.get("other").is_none());

        table
            .fulfil(&store, "k", Some(lease_id(&leased)), Bytes::from_static(b"v"), MINUTE, Vec::new())
            .expect("the real lease id works");
        assert_eq!(store.get("k").map(|found| found.value), Some(Bytes::from_static(b"v")));
        let error = table
            .fulfil(&store, "k", Some(lease_id(&leased)), Bytes::from_static(b"v2"), MINUTE, Vec::new())
            .expect_err("a filled lease is gone");
        assert_eq!(error.reason(), "LEASE_NOT_FOUND");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_lease_passes_to_the_next_caller() {
        let store = store();
        let table = LeaseTable::default();
        let first = table.get_or_lease(&store, "k", Duration::from_secs(1), MINUTE).await.expect("no error");
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, MINUTE).await.expect("no error");
        assert_ne!(lease_id(&first), lease_id(&second));
        let error = table
            .fulfil(&store, "k", Some(lease_id(&first)), Bytes::from_static(b"v"), MINUTE, Vec::new())
            .expect_err("the first lease expired");
        assert_eq!(error.reason(), "LEASE_NOT_FOUND");
        assert!(store.get("k").is_none());
        assert_eq!(table.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_takes_over_when_the_holder_dies() {
        let store = store();
        let table = LeaseTable::default();
        let first = table.get_or_lease(&store, "k", Duration::from_secs(1), MINUTE).await.expect("no error");
        // The holder never fills; the waiter wakes at the lease's expiry.
        let second = table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, MINUTE).await.expect("no error");
        assert_ne!(lease_id(&first), lease_id(&second));
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_gives_up_after_max_wait() {
        let store = store();
        let table = LeaseTable::default();
        // A zero lease ttl asks for the default.
        let leased = table.get_or_lease(&store, "k", Duration::ZERO, MINUTE).await.expect("no error");
        assert_eq!(lease_expires_in(&leased), DEFAULT_LEASE_TTL);
        let waited =
            table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, Duration::from_secs(1)).await.expect("no error");
        assert!(
            matches!(waited, LeaseOutcome::RetryLater { retry_after } if retry_after == MAX_RETRY_AFTER),
            "{waited:?}"
        );
        let impatient = table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, Duration::ZERO).await.expect("no error");
        assert!(matches!(impatient, LeaseOutcome::RetryLater { .. }), "{impatient:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn set_without_lease_fills_waiters_and_cancels_the_lease() {
        let store = store();
        let table = Arc::new(LeaseTable::default());
        let leased = table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, MINUTE).await.expect("no error");
        let waiter = tokio::spawn({
            let (store, table) = (store.clone(), table.clone());
            async move { table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, MINUTE).await }
        });
        until_waiting(&table, "k", 1).await;
        table.fulfil(&store, "k", None, Bytes::from_static(b"direct"), MINUTE, Vec::new()).expect("a plain set");
        let outcome = waiter.await.expect("waiter ran").expect("no error");
        assert_eq!(filled_value(&outcome), &Bytes::from_static(b"direct"));
        assert!(table.is_empty());
        let error = table
            .fulfil(&store, "k", Some(lease_id(&leased)), Bytes::from_static(b"late"), MINUTE, Vec::new())
            .expect_err("the lease was cancelled");
        assert_eq!(error.reason(), "LEASE_NOT_FOUND");
        assert_eq!(store.get("k").map(|found| found.value), Some(Bytes::from_static(b"direct")));
    }

    #[tokio::test(start_paused = true)]
    async fn released_lease_passes_to_a_waiter() {
        let store = store();
        let table = Arc::new(LeaseTable::default());
        let leased = table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, MINUTE).await.expect("no error");
        let waiter = tokio::spawn({
            let (store, table) = (store.clone(), table.clone());
            async move { table.get_or_lease(&store, "k", DEFAULT_LEASE_TTL, MINUTE).await }
        });
        until_waiting(&table, "k", 1).await;
        let error = table.release("k", "someone-else").expect_err("not the holder");
        assert_eq!(error.reason(), "LEASE_NOT_FOUND");
        table.release("k", lease_id(&leased)).expect("the holder releases");
        let outcome = waiter.await.expect("waiter ran").expect("no error");
        assert_ne!(lease_id(&outcome), lease_id(&leased));
        assert_eq!(table.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lease_count_is_capped_and_expired_leases_free_room() {
        let store = store();
        let table = LeaseTable::new(2);
        let short = Duration::from_secs(1);
        for key in ["a", "b"] {
            let outcome = table.get_or_lease(&store, key, short, MINUTE).await.expect("no error");
            assert!(matches!(outcome, LeaseOutcome::Leased { .. }), "{outcome:?}");
        }
        let error = table.get_or_lease(&store, "c", short, MINUTE).await.expect_err("table is full");
        assert_eq!(error, CacheError::TooManyLeases { max: 2 });

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(table.purge_expired(Instant::now().into_std()), 2);
        assert!(table.is_empty());
        let outcome = table.get_or_lease(&store, "c", short, MINUTE).await.expect("room again");
        assert!(matches!(outcome, LeaseOutcome::Leased { .. }), "{outcome:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bad_keys_and_ttls_are_handled_before_leasing() {
        let store = store();
        let table = LeaseTable::default();
        let error = table.get_or_lease(&store, "", DEFAULT_LEASE_TTL, MINUTE).await.expect_err("empty key");
        assert_eq!(error, CacheError::EmptyKey);
        let error =
            table.get_or_lease(&store, &"k".repeat(257), DEFAULT_LEASE_TTL, MINUTE).await.expect_err("long key");
        assert_eq!(error.reason(), "KEY_TOO_LARGE");
        assert!(table.is_empty());
        let outcome = table.get_or_lease(&store, "k", Duration::from_secs(3600), MINUTE).await.expect("no error");
        assert_eq!(lease_expires_in(&outcome), MAX_LEASE_TTL);
    }
}
