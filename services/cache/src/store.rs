//! `CacheStore`: the in-memory store behind the Cache service, in plain Rust.
//! It owns TTL expiry, tag and pattern invalidation, LRU-approximating eviction
//! under a byte budget and an entry cap, and the hit/miss/eviction counters.
//! It knows nothing of tonic or proto types; leases live in `lease`.
//!
//! # How the bounds hold
//! Entries live in a sharded `quick_cache` whose eviction (a CLOCK-Pro/S3-FIFO
//! hybrid) approximates LRU while keeping frequently read keys. Each entry
//! weighs `max(entry_bytes, ceil(memory_budget_bytes / max_entries))`, where
//! `entry_bytes` = key + value + tags + [`ENTRY_OVERHEAD_BYTES`]. The total
//! weight capacity is at most `memory_budget_bytes`, so at every moment
//! `bytes() <= weight <= memory_budget_bytes` and `len() <= max_entries`
//! (`len * ceil(budget / max_entries) <= budget`).
//!
//! # Locking
//! Each `quick_cache` shard has a partition here holding the tag index and the
//! expiry index of its keys, behind one `std::sync::Mutex`. Writers (set,
//! delete, invalidation, sweep, lazy expiry) hold the partition lock across the
//! cache write and the index update, so indexes and the byte counter match the
//! shard exactly; since an insert only evicts from its own shard, evictions are
//! cleaned up under the same lock. Reads of live keys take no partition lock.
//! A std mutex fits: critical sections are short and synchronous, and the lock
//! is never held across an `.await`. Counters live per partition too, so two
//! threads on different shards share no lock and no counter cache line.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use crate::error::CacheError;
use crate::pattern::KeyPattern;

/// The fixed bookkeeping charge added to every entry's byte count: the entry
/// struct, its `quick_cache` slot and its index nodes. An estimate rather than
/// an exact figure; it makes a million one-byte entries cost what they take.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// Keys handled per partition lock hold by bulk operations (tag and pattern
/// invalidation, sweeps), so a huge keyspace never stalls other callers.
const BULK_CHUNK_KEYS: usize = 1024;

/// The share of a shard kept for frequently read ("hot") entries. Set explicitly
/// (it is `quick_cache`'s default) because it also caps entry size: `quick_cache`
/// refuses an entry heavier than the hot share of its shard.
const HOT_ALLOCATION: f64 = 0.97;

/// The share of a shard an entry may take, kept just under [`HOT_ALLOCATION`]
/// so our admission check is conservative without floating point.
const ADMISSIBLE_SHARD_PERCENT: u64 = 96;

/// Limits the store enforces, filled from `CacheConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Upper bound on bytes held (keys, values, tags and per-entry overhead).
    pub memory_budget_bytes: u64,
    /// Upper bound on the number of entries.
    pub max_entries: u64,
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Most tags on one entry.
    pub max_tags_per_entry: usize,
    /// Longest tag accepted.
    pub max_tag_bytes: usize,
}

/// A live value as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedValue {
    pub value: Bytes,
    /// The entry's tags, deduplicated and sorted.
    pub tags: Arc<[Arc<str>]>,
    pub expires_at: Instant,
}

impl CachedValue {
    /// Returns how long the value has left to live at `now`.
    #[must_use]
    pub fn remaining_ttl(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }
}

/// A point-in-time view of the store's counters and occupancy.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreStats {
    pub hits: u64,
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 before the first read.
    pub hit_ratio: f64,
    /// Entries pushed out to make room (not counting replacements or expiry).
    pub evictions: u64,
    /// Entries removed because their TTL passed, lazily or by a sweep.
    pub expirations: u64,
    pub entries: u64,
    /// Sum of entry bytes held (key + value + tags + overhead).
    pub bytes: u64,
    /// Sum of entry weights; `bytes <= weight <= memory_budget_bytes`.
    pub weight: u64,
    pub memory_budget_bytes: u64,
    pub max_entries: u64,
    /// Live entries per tag, sorted by tag.
    pub tag_counts: Vec<(String, u64)>,
}

/// The in-memory key/value store. `Send + Sync`; share it through an `Arc`.
#[derive(Debug)]
pub struct CacheStore {
    entries: EntryCache,
    /// One per `quick_cache` shard, indexed by `entries.shard_index(key)`.
    partitions: Box<[Partition]>,
    limits: StoreLimits,
    /// Every entry weighs at least this, which turns the byte budget into the entry cap too.
    min_entry_weight_bytes: u64,
    /// The heaviest entry one shard admits.
    max_entry_weight_bytes: u64,
}

type EntryCache = Cache<Arc<str>, Entry, EntryWeighter, DefaultHashBuilder, EvictionRecorder>;

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    tags: Arc<[Arc<str>]>,
    expires_at: Instant,
    version: u64,
    /// Key + value + tags + overhead, computed once because the weigher runs on every eviction step.
    size_bytes: u64,
}

impl Entry {
    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at <= now
    }

    fn to_cached_value(&self) -> CachedValue {
        CachedValue { value: self.value.clone(), tags: Arc::clone(&self.tags), expires_at: self.expires_at }
    }
}

#[derive(Debug, Clone)]
struct EntryWeighter {
    min_entry_weight_bytes: u64,
}

impl Weighter<Arc<str>, Entry> for EntryWeighter {
    fn weight(&self, _key: &Arc<str>, entry: &Entry) -> u64 {
        entry.size_bytes.max(self.min_entry_weight_bytes)
    }
}

/// Collects the entries an insert displaced (evicted, replaced or refused), so
/// the store can clean its indexes once `quick_cache` has released its lock.
#[derive(Debug, Clone, Default)]
struct EvictionRecorder;

impl Lifecycle<Arc<str>, Entry> for EvictionRecorder {
    type RequestState = Vec<(Arc<str>, Entry)>;

    fn on_evict(&self, displaced: &mut Self::RequestState, key: Arc<str>, entry: Entry) {
        displaced.push((key, entry));
    }
}

/// The indexes and counters for the keys of one `quick_cache` shard. Counters
/// are kept per partition, and partitions are cache-line aligned, so threads
/// working on different shards never contend on a shared counter.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Partition {
    indexes: Mutex<PartitionIndexes>,
    /// Bytes held by this partition's entries; only changed under `indexes`.
    bytes_held: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

impl Partition {
    fn lock(&self) -> MutexGuard<'_, PartitionIndexes> {
        // A panic under this lock is already a reported bug; recovering the guard
        // keeps the store serving instead of turning one panic into one per call.
        self.indexes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
struct PartitionIndexes {
    keys_by_tag: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// Ordered by expiry so a sweep reads only what is due; the version tells
    /// two writes of one key apart.
    expiry: BTreeSet<(Instant, u64, Arc<str>)>,
    /// Gives each write a new version, so a removal aimed at one write of a key
    /// cannot take out a newer write of the same key. Per partition is enough:
    /// a key always maps to the same partition.
    next_version: u64,
}

impl PartitionIndexes {
    fn index(&mut self, key: &Arc<str>, entry: &Entry) {
        for tag in entry.tags.iter() {
            self.keys_by_tag.entry(Arc::clone(tag)).or_default().insert(Arc::clone(key));
        }
        self.expiry.insert((entry.expires_at, entry.version, Arc::clone(key)));
    }

    fn unindex(&mut self, key: &Arc<str>, entry: &Entry) {
        for tag in entry.tags.iter() {
            self.forget_tagged_key(tag, key);
        }
        self.expiry.remove(&(entry.expires_at, entry.version, Arc::clone(key)));
    }

    fn forget_tagged_key(&mut self, tag: &str, key: &str) {
        if let Some(keys) = self.keys_by_tag.get_mut(tag) {
            keys.remove(key);
            if keys.is_empty() {
                self.keys_by_tag.remove(tag);
            }
        }
    }
}

/// What a removal found, so callers count it as the right kind of removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removed {
    Live,
    Expired,
}

impl CacheStore {
    /// Builds an empty store. Zero limits are raised to 1 so construction cannot
    /// fail; the config layer rejects them before they get here.
    #[must_use]
    pub fn new(limits: StoreLimits) -> Self {
        let memory_budget_bytes = limits.memory_budget_bytes.max(1);
        let max_entries = limits.max_entries.max(1);
        let max_entry_bytes = ENTRY_OVERHEAD_BYTES
            .saturating_add(limits.max_key_bytes as u64)
            .saturating_add(limits.max_value_bytes as u64)
            .saturating_add((limits.max_tags_per_entry as u64).saturating_mul(limits.max_tag_bytes as u64));
        let shard_count = shard_count_for(memory_budget_bytes, max_entries, max_entry_bytes);
        // A multiple of the shard count, so the shards' capacities sum to at most the budget.
        let shard_capacity = (memory_budget_bytes / shard_count).max(1);
        let weight_capacity = shard_capacity * shard_count;
        // Capped at what a shard admits so a tiny budget with a tiny entry cap still
        // stores something; the cap then allows one entry per shard, and a store
        // that small has one shard (see `shard_count_for`).
        let min_entry_weight_bytes = memory_budget_bytes.div_ceil(max_entries).min(admissible_weight(shard_capacity));

        let options = OptionsBuilder::new()
            .shards(usize::try_from(shard_count).unwrap_or(1))
            .hot_allocation(HOT_ALLOCATION)
            .estimated_items_capacity(usize::try_from(max_entries).unwrap_or(usize::MAX))
            .weight_capacity(weight_capacity)
            .build()
            .expect("both required cache options are set");
        let entries = Cache::with_options(
            options,
            EntryWeighter { min_entry_weight_bytes },
            DefaultHashBuilder::default(),
            EvictionRecorder,
        );
        let max_entry_weight_bytes = admissible_weight(entries.shard_capacity());
        let partitions = (0..entries.num_shards()).map(|_| Partition::default()).collect();
        Self { entries, partitions, limits, min_entry_weight_bytes, max_entry_weight_bytes }
    }

    /// Returns the live value under `key`, counting a hit or a miss. An expired
    /// entry is removed on the spot and counts as an expiration and a miss.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<CachedValue> {
        let found = self.get_uncounted(key, Instant::now());
        let partition = self.partition_of(key);
        let counter = if found.is_some() { &partition.hits } else { &partition.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Reads like `get` without touching the hit/miss counters, for the lease
    /// table's re-checks that would otherwise count one request several times.
    pub(crate) fn get_uncounted(&self, key: &str, now: Instant) -> Option<CachedValue> {
        let entry = self.entries.get(key)?;
        if entry.is_expired(now) {
            let partition = self.partition_of(key);
            let mut indexes = partition.lock();
            if self.remove_locked(partition, &mut indexes, key, Some(entry.version)).is_some() {
                partition.expirations.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        Some(entry.to_cached_value())
    }

    /// Reports whether `key` holds a live value, without counting a hit or a
    /// miss and without refreshing the entry's recency.
    #[must_use]
    pub fn contains_live(&self, key: &str) -> bool {
        self.entries.peek(key).is_some_and(|entry| !entry.is_expired(Instant::now()))
    }

    /// Stores `value` under `key` for `ttl`, replacing any previous value and
    /// its tags. May evict other entries to stay within the limits.
    pub fn set(&self, key: &str, value: Bytes, ttl: Duration, tags: Vec<String>) -> Result<(), CacheError> {
        self.set_at(key, value, ttl, tags, Instant::now())
    }

    fn set_at(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        tags: Vec<String>,
        now: Instant,
    ) -> Result<(), CacheError> {
        self.validate(key, &value, &tags)?;
        if ttl.is_zero() {
            return Err(CacheError::InvalidTtl { reason: "ttl must be positive".to_owned() });
        }
        let expires_at =
            now.checked_add(ttl).ok_or_else(|| CacheError::InvalidTtl { reason: "ttl is too large".to_owned() })?;

        let mut tags: Vec<Arc<str>> = tags.into_iter().map(Arc::from).collect();
        tags.sort_unstable();
        tags.dedup();
        let tag_bytes: u64 = tags.iter().map(|tag| tag.len() as u64).sum();
        let overhead_bytes = ENTRY_OVERHEAD_BYTES + key.len() as u64 + tag_bytes;
        let size_bytes = overhead_bytes + value.len() as u64;
        if size_bytes.max(self.min_entry_weight_bytes) > self.max_entry_weight_bytes {
            return Err(self.too_large_for_shard(value.len(), overhead_bytes));
        }

        let key: Arc<str> = Arc::from(key);
        let partition = self.partition_of(&key);
        let mut indexes = partition.lock();
        let entry = Entry { value, tags: tags.into(), expires_at, version: indexes.next_version, size_bytes };
        indexes.next_version += 1;

        let mut displaced = Vec::new();
        self.entries.insert_with_lifecycle(Arc::clone(&key), entry.clone(), &mut displaced);
        let mut admitted = true;
        for (displaced_key, displaced_entry) in displaced {
            if displaced_entry.version == entry.version {
                admitted = false;
                continue;
            }
            indexes.unindex(&displaced_key, &displaced_entry);
            partition.bytes_held.fetch_sub(displaced_entry.size_bytes, Ordering::Relaxed);
            // Replacing a key's own value is not an eviction.
            if displaced_key != key {
                partition.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !admitted {
            // Only reachable if quick_cache's admission rule drifts from `admissible_weight`.
            return Err(self.too_large_for_shard(entry.value.len(), overhead_bytes));
        }
        indexes.index(&key, &entry);
        partition.bytes_held.fetch_add(entry.size_bytes, Ordering::Relaxed);
        Ok(())
    }

    fn validate(&self, key: &str, value: &Bytes, tags: &[String]) -> Result<(), CacheError> {
        let limits = &self.limits;
        if key.is_empty() {
            return Err(CacheError::EmptyKey);
        }
        if key.len() > limits.max_key_bytes {
            return Err(CacheError::KeyTooLarge { size_bytes: key.len(), max_bytes: limits.max_key_bytes });
        }
        if value.len() > limits.max_value_bytes {
            return Err(CacheError::ValueTooLarge { size_bytes: value.len(), max_bytes: limits.max_value_bytes });
        }
        if tags.len() > limits.max_tags_per_entry {
            return Err(CacheError::TooManyTags { count: tags.len(), max: limits.max_tags_per_entry });
        }
        if let Some(tag) = tags.iter().find(|tag| tag.len() > limits.max_tag_bytes) {
            return Err(CacheError::TagTooLarge { size_bytes: tag.len(), max_bytes: limits.max_tag_bytes });
        }
        Ok(())
    }

    /// The error for an entry heavier than a shard admits, naming the largest
    /// value that would fit beside this key and these tags.
    fn too_large_for_shard(&self, value_bytes: usize, overhead_bytes: u64) -> CacheError {
        let max_value_bytes = self.max_entry_weight_bytes.saturating_sub(overhead_bytes);
        CacheError::ValueTooLarge {
            size_bytes: value_bytes,
            max_bytes: usize::try_from(max_value_bytes).unwrap_or(usize::MAX).min(self.limits.max_value_bytes),
        }
    }

    /// Removes `key`. Returns whether a live value was removed; an expired one
    /// is cleaned up and counted as an expiration instead.
    #[allow(clippy::must_use_candidate, reason = "called for its effect; the result is informational")]
    pub fn delete(&self, key: &str) -> bool {
        self.delete_at(key, Instant::now())
    }

    fn delete_at(&self, key: &str, now: Instant) -> bool {
        let partition = self.partition_of(key);
        let mut indexes = partition.lock();
        match self.remove_locked(partition, &mut indexes, key, None) {
            Some(entry) => count_removal(partition, &entry, now) == Removed::Live,
            None => false,
        }
    }

    /// Removes every entry carrying any of `tags`. Returns how many live
    /// entries were removed. Works in chunks, releasing the lock between them.
    #[allow(clippy::must_use_candidate, reason = "called for its effect; the result is informational")]
    pub fn invalidate_tags(&self, tags: &[String]) -> u64 {
        self.invalidate_tags_at(tags, Instant::now())
    }

    fn invalidate_tags_at(&self, tags: &[String], now: Instant) -> u64 {
        let mut removed_live = 0;
        for partition in &self.partitions {
            loop {
                let mut indexes = partition.lock();
                let chunk: Vec<Arc<str>> = tags
                    .iter()
                    .filter_map(|tag| indexes.keys_by_tag.get(tag.as_str()))
                    .flatten()
                    .take(BULK_CHUNK_KEYS)
                    .cloned()
                    .collect();
                for key in &chunk {
                    match self.remove_locked(partition, &mut indexes, key, None) {
                        Some(entry) => {
                            if count_removal(partition, &entry, now) == Removed::Live {
                                removed_live += 1;
                            }
                        }
                        // Cannot happen while the index matches the shard; scrubbing
                        // the key keeps this loop finite even if it ever did not.
                        None => {
                            for tag in tags {
                                indexes.forget_tagged_key(tag, key);
                            }
                        }
                    }
                }
                if chunk.len() < BULK_CHUNK_KEYS {
                    break;
                }
            }
        }
        removed_live
    }

    /// Removes every entry whose key matches `pattern`. Returns how many live
    /// entries were removed. Walks the keyspace one shard read-lock per key and
    /// removes in chunks, so it never stalls other callers; it is still O(keys),
    /// so async callers run it in `spawn_blocking`.
    #[allow(clippy::must_use_candidate, reason = "called for its effect; the result is informational")]
    pub fn invalidate_matching(&self, pattern: &KeyPattern) -> u64 {
        self.invalidate_matching_at(pattern, Instant::now())
    }

    fn invalidate_matching_at(&self, pattern: &KeyPattern, now: Instant) -> u64 {
        // Snapshot first: removing while `iter()` walks a shard could skip keys.
        // The version pins each match, so a key re-set meanwhile keeps its new value.
        let mut matches: Vec<(usize, Arc<str>, u64)> = self
            .entries
            .iter()
            .filter(|(key, _)| pattern.matches(key))
            .map(|(key, entry)| (self.entries.shard_index(&*key), key, entry.version))
            .collect();
        matches.sort_unstable_by_key(|(partition_index, _, _)| *partition_index);

        let mut removed_live = 0;
        for partition_matches in matches.chunk_by(|a, b| a.0 == b.0) {
            let partition = &self.partitions[partition_matches[0].0];
            for chunk in partition_matches.chunks(BULK_CHUNK_KEYS) {
                let mut indexes = partition.lock();
                for (_, key, version) in chunk {
                    if let Some(entry) = self.remove_locked(partition, &mut indexes, key, Some(*version))
                        && count_removal(partition, &entry, now) == Removed::Live
                    {
                        removed_live += 1;
                    }
                }
            }
        }
        removed_live
    }

    /// Removes every entry whose TTL ended at or before `now`. Returns how many.
    #[allow(clippy::must_use_candidate, reason = "called for its effect; the result is informational")]
    pub fn sweep_expired(&self, now: Instant) -> u64 {
        let mut expired_total = 0;
        for partition in &self.partitions {
            let mut expired = 0;
            loop {
                let mut indexes = partition.lock();
                let chunk: Vec<(Instant, u64, Arc<str>)> = indexes
                    .expiry
                    .iter()
                    .take_while(|(expires_at, _, _)| *expires_at <= now)
                    .take(BULK_CHUNK_KEYS)
                    .cloned()
                    .collect();
                for due in &chunk {
                    let (_, version, key) = due;
                    if self.remove_locked(partition, &mut indexes, key, Some(*version)).is_some() {
                        expired += 1;
                    } else {
                        // Cannot happen while the index matches the shard; dropping
                        // the stale item keeps this loop finite even if it ever did not.
                        indexes.expiry.remove(due);
                    }
                }
                if chunk.len() < BULK_CHUNK_KEYS {
                    break;
                }
            }
            partition.expirations.fetch_add(expired, Ordering::Relaxed);
            expired_total += expired;
        }
        expired_total
    }

    /// Returns the counters, occupancy and per-tag counts.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        let total = |counter: fn(&Partition) -> &AtomicU64| -> u64 {
            self.partitions.iter().map(|partition| counter(partition).load(Ordering::Relaxed)).sum()
        };
        let hits = total(|partition| &partition.hits);
        let misses = total(|partition| &partition.misses);
        let mut tag_counts: BTreeMap<String, u64> = BTreeMap::new();
        for partition in &self.partitions {
            let indexes = partition.lock();
            for (tag, keys) in &indexes.keys_by_tag {
                *tag_counts.entry(tag.to_string()).or_default() += keys.len() as u64;
            }
        }
        StoreStats {
            hits,
            misses,
            hit_ratio: ratio(hits, hits + misses),
            evictions: total(|partition| &partition.evictions),
            expirations: total(|partition| &partition.expirations),
            entries: self.len() as u64,
            bytes: self.bytes(),
            weight: self.entries.weight(),
            memory_budget_bytes: self.limits.memory_budget_bytes,
            max_entries: self.limits.max_entries,
            tag_counts: tag_counts.into_iter().collect(),
        }
    }

    /// Returns the number of entries held, expired ones not yet removed included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Reports whether the store holds no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the bytes held: keys, values, tags and per-entry overhead.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.partitions.iter().map(|partition| partition.bytes_held.load(Ordering::Relaxed)).sum()
    }

    /// Returns the limits the store was built with.
    #[must_use]
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    fn partition_of(&self, key: &str) -> &Partition {
        &self.partitions[self.entries.shard_index(key)]
    }

    /// Removes `key` (only if its version matches, when given) and its index
    /// entries. The caller holds `partition`'s lock, as `indexes`.
    fn remove_locked(
        &self,
        partition: &Partition,
        indexes: &mut PartitionIndexes,
        key: &str,
        version: Option<u64>,
    ) -> Option<Entry> {
        let (key, entry) = match version {
            Some(version) => self.entries.remove_if(key, |entry| entry.version == version),
            None => self.entries.remove(key),
        }?;
        indexes.unindex(&key, &entry);
        partition.bytes_held.fetch_sub(entry.size_bytes, Ordering::Relaxed);
        Some(entry)
    }
}

/// Counts a removed entry as an expiration when its TTL had passed.
fn count_removal(partition: &Partition, entry: &Entry, now: Instant) -> Removed {
    if entry.is_expired(now) {
        partition.expirations.fetch_add(1, Ordering::Relaxed);
        Removed::Expired
    } else {
        Removed::Live
    }
}

/// Picks a power-of-two shard count: about four per core for low contention,
/// but few enough that the largest allowed entry fits in one shard and each
/// shard holds at least 32 entries (`quick_cache`'s own floor, mirrored so the
/// count we plan is the count it builds).
fn shard_count_for(memory_budget_bytes: u64, max_entries: u64, max_entry_bytes: u64) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut shard_count = (cores as u64 * 4).next_power_of_two();
    while shard_count > 1
        && (admissible_weight(memory_budget_bytes / shard_count) < max_entry_bytes || max_entries / shard_count < 32)
    {
        shard_count /= 2;
    }
    shard_count
}

/// The heaviest entry a shard of `shard_capacity` accepts.
fn admissible_weight(shard_capacity: u64) -> u64 {
    let admissible = u128::from(shard_capacity) * u128::from(ADMISSIBLE_SHARD_PERCENT) / 100;
    u64::try_from(admissible).unwrap_or(u64::MAX)
}

#[allow(clippy::cast_precision_loss, reason = "a ratio for display; counters beyond 2^53 lose nothing that matters")]
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn limits(memory_budget_bytes: u64, max_entries: u64) -> StoreLimits {
        StoreLimits {
            memory_budget_bytes,
            max_entries,
            max_key_bytes: 256,
            max_value_bytes: 1024,
            max_tags_per_entry: 4,
            max_tag_bytes: 32,
        }
    }

    fn roomy_store() -> CacheStore {
        CacheStore::new(limits(1 << 20, 10_000))
    }

    fn value(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn tag_count(store: &CacheStore, tag: &str) -> u64 {
        store.stats().tag_counts.iter().find(|(name, _)| name == tag).map_or(0, |(_, count)| *count)
    }

    #[test]
    fn set_then_get_returns_value_tags_and_ttl() {
        let store = roomy_store();
        let now = Instant::now();
        store.set_at("user:1", value("alice"), 10 * SECOND, tags(&["users", "a", "users"]), now).expect("valid set");
        let found = store.get_uncounted("user:1", now).expect("live value");
        assert_eq!(found.value, value("alice"));
        assert_eq!(&*found.tags, &[Arc::from("a"), Arc::from("users")]);
        assert_eq!(found.remaining_ttl(now), 10 * SECOND);
        assert_eq!(store.len(), 1);
        assert_eq!(store.bytes(), ENTRY_OVERHEAD_BYTES + 6 + 5 + 1 + 5);
    }

    #[test]
    fn get_counts_hits_and_misses() {
        let store = roomy_store();
        store.set("k", value("v"), 60 * SECOND, Vec::new()).expect("valid set");
        assert!(store.contains_live("k"));
        assert!(!store.contains_live("absent"));
        assert!(store.get("k").is_some());
        assert!(store.get("k").is_some());
        assert!(store.get("absent").is_none());
        let stats = store.stats();
        assert_eq!((stats.hits, stats.misses), (2, 1));
        assert!((stats.hit_ratio - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn expired_entry_is_removed_lazily_on_read() {
        let store = roomy_store();
        let now = Instant::now();
        store.set_at("k", value("v"), SECOND, tags(&["t"]), now).expect("valid set");
        assert!(store.get_uncounted("k", now + SECOND / 2).is_some());
        assert!(store.get_uncounted("k", now + SECOND).is_none());
        let stats = store.stats();
        assert_eq!(stats.expirations, 1);
        assert_eq!(stats.entries, 0);
        assert_eq!(stats.bytes, 0);
        assert!(stats.tag_counts.is_empty());
    }

    #[test]
    fn public_get_of_expired_entry_counts_a_miss_and_an_expiration() {
        let store = roomy_store();
        // Already expired when read: the entry was written 2 s in the past with a 1 s ttl.
        let written_at = Instant::now().checked_sub(2 * SECOND).expect("the monotonic clock is past 2 s");
        store.set_at("k", value("v"), SECOND, Vec::new(), written_at).expect("valid set");
        assert!(store.get("k").is_none());
        let stats = store.stats();
        assert_eq!((stats.hits, stats.misses, stats.expirations), (0, 1, 1));
        assert!(store.is_empty());
    }

    #[test]
    fn sweep_removes_only_due_entries_and_respects_resets() {
        let store = roomy_store();
        let now = Instant::now();
        store.set_at("a", value("1"), SECOND, tags(&["t"]), now).expect("set a");
        store.set_at("b", value("2"), 2 * SECOND, tags(&["t"]), now).expect("set b");
        store.set_at("c", value("3"), 10 * SECOND, tags(&["t"]), now).expect("set c");
        // Re-setting `a` with a longer ttl must move its expiry, not keep the old one.
        store.set_at("a", value("1b"), 10 * SECOND, tags(&["t"]), now).expect("reset a");

        assert_eq!(store.sweep_expired(now + 2 * SECOND), 1);
        assert!(store.get_uncounted("b", now).is_none());
        assert_eq!(store.get_uncounted("a", now).map(|found| found.value), Some(value("1b")));
        assert_eq!(store.sweep_expired(now + 2 * SECOND), 0);
        assert_eq!(store.sweep_expired(now + 10 * SECOND), 2);
        let stats = store.stats();
        assert_eq!(stats.expirations, 3);
        assert_eq!((stats.entries, stats.bytes), (0, 0));
        assert!(stats.tag_counts.is_empty());
    }

    #[test]
    fn sweep_handles_more_than_one_chunk() {
        let store = CacheStore::new(limits(64 << 20, 100_000));
        let now = Instant::now();
        let key_count = 3 * BULK_CHUNK_KEYS + 7;
        for i in 0..key_count {
            store.set_at(&format!("k{i}"), value("v"), SECOND, Vec::new(), now).expect("valid set");
        }
        assert_eq!(store.sweep_expired(now + SECOND), key_count as u64);
        assert!(store.is_empty());
    }

    #[test]
    fn tag_invalidation_removes_tagged_keys_only() {
        let store = roomy_store();
        let now = Instant::now();
        let ttl = 60 * SECOND;
        store.set_at("u1", value("a"), ttl, tags(&["users", "eu"]), now).expect("set");
        store.set_at("u2", value("b"), ttl, tags(&["users"]), now).expect("set");
        store.set_at("o1", value("c"), ttl, tags(&["orders", "eu"]), now).expect("set");
        store.set_at("plain", value("d"), ttl, Vec::new(), now).expect("set");
        assert_eq!(tag_count(&store, "eu"), 2);

        assert_eq!(store.invalidate_tags_at(&tags(&["users"]), now), 2);
        assert!(store.get_uncounted("u1", now).is_none());
        assert!(store.get_uncounted("u2", now).is_none());
        assert!(store.get_uncounted("o1", now).is_some());
        assert!(store.get_uncounted("plain", now).is_some());
        // u1 is gone, so it no longer counts under its other tag either.
        assert_eq!(tag_count(&store, "eu"), 1);
        assert_eq!(tag_count(&store, "users"), 0);
        assert_eq!(store.invalidate_tags_at(&tags(&["users", "nope"]), now), 0);
    }

    #[test]
    fn resetting_a_key_replaces_its_tags() {
        let store = roomy_store();
        let now = Instant::now();
        let ttl = 60 * SECOND;
        store.set_at("k", value("v1"), ttl, tags(&["old", "both"]), now).expect("set");
        store.set_at("k", value("v2"), ttl, tags(&["new", "both"]), now).expect("reset");

        assert_eq!(tag_count(&store, "old"), 0);
        assert_eq!(tag_count(&store, "both"), 1);
        assert_eq!(store.invalidate_tags_at(&tags(&["old"]), now), 0);
        assert!(store.get_uncounted("k", now).is_some());
        assert_eq!(store.invalidate_tags_at(&tags(&["new"]), now), 1);
        assert!(store.is_empty());
        assert_eq!(store.stats().evictions, 0, "a replacement is not an eviction");
    }

    #[test]
    fn tag_invalidation_handles_more_than_one_chunk() {
        let store = CacheStore::new(limits(64 << 20, 100_000));
        let now = Instant::now();
        let key_count = 2 * BULK_CHUNK_KEYS + 3;
        for i in 0..key_count {
            store.set_at(&format!("k{i}"), value("v"), 60 * SECOND, tags(&["bulk"]), now).expect("valid set");
        }
        assert_eq!(store.invalidate_tags_at(&tags(&["bulk"]), now), key_count as u64);
        assert!(store.is_empty());
    }

    #[test]
    fn expired_tagged_entries_count_as_expirations_not_invalidations() {
        let store = roomy_store();
        let now = Instant::now();
        store.set_at("short", value("v"), SECOND, tags(&["t"]), now).expect("set");
        store.set_at("long", value("v"), 60 * SECOND, tags(&["t"]), now).expect("set");
        assert_eq!(store.invalidate_tags_at(&tags(&["t"]), now + 2 * SECOND), 1);
        assert_eq!(store.stats().expirations, 1);
        assert!(store.is_empty());
    }

    #[test]
    fn pattern_invalidation_counts_removed_keys() {
        let store = roomy_store();
        let now = Instant::now();
        for key in ["user:1", "user:2", "user:2:profile", "team:1", "superuser:9"] {
            store.set_at(key, value("v"), 60 * SECOND, tags(&["t"]), now).expect("valid set");
        }
        let glob = KeyPattern::glob("user:*").expect("valid glob");
        assert_eq!(store.invalidate_matching_at(&glob, now), 3);
        assert_eq!(store.invalidate_matching_at(&glob, now), 0);
        assert!(store.get_uncounted("team:1", now).is_some());

        let regex = KeyPattern::regex("^(team|superuser):[0-9]$").expect("valid regex");
        assert_eq!(store.invalidate_matching_at(&regex, now), 2);
        assert!(store.is_empty());
        assert_eq!(tag_count(&store, "t"), 0);
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn pattern_invalidation_handles_more_than_one_chunk() {
        let store = CacheStore::new(limits(64 << 20, 100_000));
        let now = Instant::now();
        let key_count = 2 * BULK_CHUNK_KEYS * store.partitions.len() + 5;
        for i in 0..key_count {
            store.set_at(&format!("k:{i}"), value("v"), 60 * SECOND, Vec::new(), now).expect("valid set");
            store.set_at(&format!("keep:{i}"), value("v"), 60 * SECOND, Vec::new(), now).expect("valid set");
        }
        let glob = KeyPattern::glob("k:*").expect("valid glob");
        assert_eq!(store.invalidate_matching_at(&glob, now), key_count as u64);
        assert_eq!(store.len(), key_count);
    }

    #[test]
    fn delete_reports_whether_a_live_value_was_removed() {
        let store = roomy_store();
        let now = Instant::now();
        store.set_at("k", value("v"), SECOND, tags(&["t"]), now).expect("set");
        assert!(store.delete_at("k", now));
        assert!(!store.delete_at("k", now));
        store.set_at("k", value("v"), SECOND, tags(&["t"]), now).expect("set");
        assert!(!store.delete_at("k", now + SECOND), "expired values are not live");
        let stats = store.stats();
        assert_eq!((stats.entries, stats.bytes, stats.expirations), (0, 0, 1));
        assert!(stats.tag_counts.is_empty());
    }

    #[test]
    fn memory_budget_bounds_bytes_and_weight_at_every_step() {
        let budget_bytes = 64 * 1024;
        let store = CacheStore::new(limits(budget_bytes, 10_000));
        let now = Instant::now();
        let payload = Bytes::from(vec![7_u8; 1000]);
        let mut written_bytes = 0;
        let mut writes = 0_u64;
        while written_bytes < 3 * budget_bytes {
            let key = format!("key:{writes}");
            let tag = format!("group:{}", writes % 10);
            store.set_at(&key, payload.clone(), 60 * SECOND, vec![tag, "all".to_owned()], now).expect("valid set");
            written_bytes += payload.len() as u64;
            writes += 1;
            let stats = store.stats();
            assert!(stats.bytes <= budget_bytes, "bytes {} after {writes} writes", stats.bytes);
            assert!(stats.weight <= budget_bytes, "weight {} after {writes} writes", stats.weight);
            assert!(stats.bytes <= stats.weight);
        }
        let stats = store.stats();
        assert!(stats.evictions > 0);
        assert_eq!(stats.evictions + stats.entries, writes);
        // The tag index holds exactly the surviving keys.
        assert_eq!(tag_count(&store, "all"), stats.entries);
        let per_group: u64 = (0..10).map(|group| tag_count(&store, &format!("group:{group}"))).sum();
        assert_eq!(per_group, stats.entries);
        for i in 0..writes {
            let key = format!("key:{i}");
            let live = store.entries.peek(key.as_str()).is_some();
            let indexes = store.partition_of(&key).lock();
            let tag_indexed = indexes.keys_by_tag.get("all").is_some_and(|keys| keys.contains(key.as_str()));
            let in_expiry = indexes.expiry.iter().any(|(_, _, k)| k.as_ref() == key.as_str());
            assert_eq!(tag_indexed, live, "{key} tag index");
            assert_eq!(in_expiry, live, "{key} expiry index");
        }
        assert_eq!(store.invalidate_tags_at(&tags(&["all"]), now), stats.entries);
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[test]
    fn max_entries_bounds_the_entry_count() {
        let max_entries = 100;
        let store = CacheStore::new(limits(1 << 20, max_entries));
        let now = Instant::now();
        for i in 0..1000 {
            store.set_at(&format!("k{i}"), value("v"), 60 * SECOND, Vec::new(), now).expect("valid set");
            assert!(store.len() as u64 <= max_entries, "{} entries", store.len());
        }
        let stats = store.stats();
        assert!(stats.entries > 0);
        assert_eq!(stats.evictions + stats.entries, 1000);
    }

    #[test]
    fn invalid_input_is_rejected_and_nothing_is_stored() {
        let store = roomy_store();
        let ttl = 60 * SECOND;
        let check = |result: Result<(), CacheError>, expected_reason: &str| {
            assert_eq!(result.expect_err("rejected").reason(), expected_reason);
        };
        check(store.set("", value("v"), ttl, Vec::new()), "EMPTY_KEY");
        check(store.set(&"k".repeat(257), value("v"), ttl, Vec::new()), "KEY_TOO_LARGE");
        check(store.set("k", Bytes::from(vec![0; 1025]), ttl, Vec::new()), "VALUE_TOO_LARGE");
        check(store.set("k", value("v"), ttl, tags(&["a", "b", "c", "d", "e"])), "TOO_MANY_TAGS");
        check(store.set("k", value("v"), ttl, vec!["t".repeat(33)]), "TAG_TOO_LARGE");
        check(store.set("k", value("v"), Duration::ZERO, Vec::new()), "INVALID_TTL");
        check(store.set("k", value("v"), Duration::MAX, Vec::new()), "INVALID_TTL");
        assert!(store.is_empty());
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn entry_heavier_than_a_shard_is_rejected_without_side_effects() {
        // A 2 KiB budget cannot hold a 1 KiB value twice over, let alone in a shard.
        let store = CacheStore::new(StoreLimits { max_value_bytes: 4096, ..limits(2048, 10) });
        store.set("k", value("small"), 60 * SECOND, Vec::new()).expect("fits");
        let error =
            store.set("k", Bytes::from(vec![0; 4000]), 60 * SECOND, Vec::new()).expect_err("heavier than a shard");
        let CacheError::ValueTooLarge { size_bytes, max_bytes } = error else {
            panic!("expected ValueTooLarge, got {error:?}");
        };
        assert_eq!(size_bytes, 4000);
        assert!(max_bytes < 2048);
        assert_eq!(store.get("k").map(|found| found.value), Some(value("small")));
        store.set("k", Bytes::from(vec![0; max_bytes]), 60 * SECOND, Vec::new()).expect("the reported maximum fits");
        store
            .set("k", Bytes::from(vec![0; max_bytes + 1]), 60 * SECOND, Vec::new())
            .expect_err("one byte more does not");
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CacheStore>();
        assert_send_sync::<Arc<CacheStore>>();
    }
}
