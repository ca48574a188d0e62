//! In-process throughput of `CacheStore` get (hits) and set, on 1 and 2 threads,
//! with 64-byte values over 10k keys. No network: this is the ceiling the gRPC
//! layer works under. Figures go in `docs/benchmarks.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mesh_cache::{CacheStore, StoreLimits};

const KEY_COUNT: usize = 10_000;
const VALUE_BYTES: usize = 64;
const TTL: Duration = Duration::from_secs(3600);

/// Large enough that the 10k keys never evict, so gets measure hits only.
fn store() -> CacheStore {
    CacheStore::new(StoreLimits {
        memory_budget_bytes: 100 << 20,
        max_entries: 100_000,
        max_key_bytes: 256,
        max_value_bytes: 1 << 20,
        max_tags_per_entry: 8,
        max_tag_bytes: 64,
    })
}

fn keys() -> Vec<String> {
    (0..KEY_COUNT).map(|i| format!("bench:key:{i}")).collect()
}

/// One buffer per key, as values arriving in separate requests would be; one
/// shared buffer would make every read contend on its reference count.
fn values() -> Vec<Bytes> {
    (0..KEY_COUNT).map(|_| Bytes::from(vec![0xA5_u8; VALUE_BYTES])).collect()
}

fn filled_store(keys: &[String], values: &[Bytes]) -> CacheStore {
    let store = store();
    for (key, value) in keys.iter().zip(values) {
        store.set(key, value.clone(), TTL, Vec::new()).expect("bench entries are within limits");
    }
    store
}

/// Runs `op(key_index)` `iters` times on each of `threads` threads and returns
/// the wall time, so criterion's elements/s is the combined rate. Each thread
/// starts at a different key to keep them off the same shard in lockstep.
fn run_threads(threads: usize, iters: u64, op: &(dyn Fn(usize) + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || {
                let mut index = thread * KEY_COUNT / threads;
                for _ in 0..iters {
                    op(index);
                    index = (index + 1) % KEY_COUNT;
                }
            });
        }
    });
    start.elapsed()
}

fn get_set(c: &mut Criterion) {
    let keys = keys();
    let values = values();
    let store = filled_store(&keys, &values);

    let mut group = c.benchmark_group("store");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for threads in [1_usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("get_hit/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, &|index| {
                    black_box(store.get(black_box(&keys[index])));
                })
            });
        });
        group.bench_function(format!("set/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, &|index| {
                    store
                        .set(black_box(&keys[index]), values[index].clone(), TTL, Vec::new())
                        .expect("bench entries are within limits");
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, get_set);
criterion_main!(benches);
