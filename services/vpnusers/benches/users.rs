//! VpnUsers storage benchmarks on SQLite and PostgreSQL (no gRPC, no cache):
//! filling 100k users in batches of 100 (one transaction each), then at that
//! size bulk status of 1000 ids, filtered lists, search, stats and a batch
//! read. Criterion reports means; the p50/p99 lines come from a plain loop,
//! because the targets are stated as percentiles.
//!
//! `cargo bench -p mesh-vpnusers --bench users`. PostgreSQL runs when
//! `MESH_TEST_POSTGRES_URL` names a role that may create databases (see
//! `scripts/test-postgres`); `MESH_BENCH_USERS` changes the size (100000);
//! `MESH_BENCH_WRITERS` fills with that many concurrent callers (1), each
//! still 100 users per transaction; `MESH_VPNUSERS_POSTGRES_SYNCHRONOUS_COMMIT=false`
//! measures PostgreSQL with the service's opt-out of durable commits.

// Product names (SQLite, PostgreSQL) are prose in these docs, not code.
#![allow(clippy::doc_markdown)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use mesh_kit::ConfigSource;
use mesh_vpnusers::filter::{SortDirection, SortField};
use mesh_vpnusers::store::{ListQuery, StatusSelector};
use mesh_vpnusers::{
    BatchMode, DatabaseLocation, DatabaseUrl, NewUser, UserDirectory, UserFilter, UserSort, UserStatus, UserStore,
    VpnProtocol, VpnUsersConfig,
};
use sea_orm::{ConnectionTrait, Database};
use tokio::runtime::Runtime;
use uuid::Uuid;

const BATCH_SIZE: usize = 100;
const PERCENTILE_RUNS: usize = 1000;

fn main() {
    let source = ConfigSource::from_process();
    // `cargo test --all-targets` runs this binary without `--bench`: then it is a smoke test at a
    // size that keeps the test suite fast, not a measurement.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let default_user_count = if measuring { 100_000 } else { 1_000 };
    let user_count: usize = source.var("MESH_BENCH_USERS").and_then(|n| n.parse().ok()).unwrap_or(default_user_count);
    let writers: usize = source.var("MESH_BENCH_WRITERS").and_then(|n| n.parse().ok()).unwrap_or(1).max(1);
    let synchronous_commit = source.var("MESH_VPNUSERS_POSTGRES_SYNCHRONOUS_COMMIT") != Some("false");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let sqlite_dir = tempfile::tempdir().unwrap();
    let mut backends = vec![("sqlite", DatabaseLocation::SqliteFile(sqlite_dir.path().join("bench.sqlite3")), None)];
    if let Some(admin_url) = source.var("MESH_TEST_POSTGRES_URL") {
        let name = format!("vpnusers_bench_{}", Uuid::new_v4().simple());
        runtime.block_on(async {
            let admin = Database::connect(admin_url).await.expect("connect to PostgreSQL");
            admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create bench database");
        });
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let url = DatabaseUrl::new(format!("{base}/{name}"));
        backends.push(("postgres", DatabaseLocation::Url(url), Some((admin_url.to_owned(), name))));
    } else {
        eprintln!("MESH_TEST_POSTGRES_URL is not set: PostgreSQL is not benchmarked");
    }

    for (backend, location, postgres) in backends {
        let directory = runtime.block_on(open(&location, synchronous_commit));
        if backend == "postgres" {
            println!("vpnusers/postgres: synchronous_commit = {}", if synchronous_commit { "on" } else { "off" });
        }
        runtime.block_on(fill(backend, &directory, user_count, writers));
        bench_at_size(&mut criterion, &runtime, backend, &directory, user_count);
        if let Some((admin_url, name)) = postgres {
            drop(directory);
            runtime.block_on(async {
                let admin = Database::connect(admin_url.as_str()).await.unwrap();
                admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
            });
        }
    }
    criterion.final_summary();
}

async fn open(location: &DatabaseLocation, synchronous_commit: bool) -> UserDirectory {
    let store = UserStore::open(location, 8, Duration::from_secs(5))
        .await
        .expect("open store")
        .with_postgres_synchronous_commit(synchronous_commit);
    let config = VpnUsersConfig { max_bulk_ids: 10_000, ..VpnUsersConfig::default() };
    let (_sender, receiver) = tokio::sync::watch::channel(Arc::new(config));
    UserDirectory::new(store, None, receiver)
}

fn new_user(i: usize) -> NewUser {
    let mut user = NewUser::new(format!("user{i:06}"), format!("user{i:06}@mail{}.example.com", i % 50));
    user.status = UserStatus::ALL[i % UserStatus::ALL.len()];
    user.protocol = VpnProtocol::ALL[i % VpnProtocol::ALL.len()];
    user.traffic_used_bytes = (i as u64 % 1000) * 1_048_576;
    user.traffic_limit_bytes = if i.is_multiple_of(3) { 500 * 1_048_576 } else { 0 };
    user.note = format!("plan {} region {} ticket {i}", ["basic", "plus", "pro"][i % 3], ["eu", "us", "ap"][i % 3]);
    user
}

/// Creates `count` users, `BATCH_SIZE` per transaction, from `writers`
/// concurrent callers (caller `w` takes batches `w`, `w + writers`, ..), and
/// prints the rate and the batch latency percentiles.
async fn fill(backend: &str, directory: &UserDirectory, count: usize, writers: usize) {
    let started = Instant::now();
    let callers: Vec<_> = (0..writers)
        .map(|writer| {
            let directory = directory.clone();
            tokio::spawn(async move {
                let mut batch_latencies = Vec::new();
                for first in (writer * BATCH_SIZE..count).step_by(writers * BATCH_SIZE) {
                    let batch: Vec<NewUser> = (first..(first + BATCH_SIZE).min(count)).map(new_user).collect();
                    let batch_started = Instant::now();
                    directory.create_users(batch, BatchMode::AllOrNothing).await.expect("create batch");
                    batch_latencies.push(batch_started.elapsed());
                }
                batch_latencies
            })
        })
        .collect();
    let mut batch_latencies = Vec::with_capacity(count / BATCH_SIZE + 1);
    for caller in callers {
        batch_latencies.extend(caller.await.expect("a filling caller panicked"));
    }
    let elapsed = started.elapsed();
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let rate = count as f64 / elapsed.as_secs_f64();
    println!(
        "vpnusers/{backend}/batch_create: {count} users from {writers} caller(s) in {:.2} s = {rate:.0} users/s; \
         per batch of {BATCH_SIZE}: {}; {}",
        elapsed.as_secs_f64(),
        percentiles(&mut batch_latencies),
        load_average()
    );
}

/// The machine's load average, printed with the figures: on a shared machine
/// wall-clock results only compare at a similar load.
fn load_average() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(line) => format!("load average {}", line.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        Err(_) => "load average unknown".to_owned(),
    }
}

fn percentiles(latencies: &mut [Duration]) -> String {
    latencies.sort_unstable();
    let at = |fraction: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)] // an index
        let index = ((latencies.len() as f64 * fraction) as usize).min(latencies.len() - 1);
        latencies[index]
    };
    format!("p50 {:?}, p99 {:?}, max {:?}", at(0.50), at(0.99), at(1.0))
}

fn filtered_list() -> ListQuery {
    ListQuery {
        filter: UserFilter {
            statuses: vec![UserStatus::Active, UserStatus::Suspended],
            protocols: vec![VpnProtocol::WireGuard],
            ..UserFilter::default()
        },
        sort: UserSort { field: SortField::CreatedAt, direction: SortDirection::Descending },
        page_size: 50,
        ..ListQuery::default()
    }
}

fn wildcard_list() -> ListQuery {
    ListQuery {
        filter: UserFilter { username_pattern: Some("user0123*".into()), ..UserFilter::default() },
        sort: UserSort { field: SortField::Username, direction: SortDirection::Ascending },
        page_size: 50,
        ..ListQuery::default()
    }
}

fn bench_at_size(criterion: &mut Criterion, runtime: &Runtime, backend: &str, directory: &UserDirectory, count: usize) {
    let sample_ids: Vec<Uuid> = runtime.block_on(async {
        let mut ids = Vec::new();
        let mut after = None;
        while ids.len() < 2000 {
            let chunk = directory.export_chunk(&UserFilter::default(), after, 1000).await.unwrap();
            after = chunk.last().map(|user| user.id);
            ids.extend(chunk.into_iter().step_by(17).map(|user| user.id));
        }
        ids
    });
    let thousand_ids: Vec<Uuid> = sample_ids[..1000].to_vec();
    let second_page_token = runtime.block_on(directory.list_users(&filtered_list())).unwrap().next_page_token;

    let mut group = criterion.benchmark_group(format!("vpnusers/{backend}/{count}"));
    group.throughput(Throughput::Elements(1000));
    let mut flip = false;
    group.bench_function("set_status_1000_ids", |b| {
        b.to_async(runtime).iter(|| {
            flip = !flip;
            let status = if flip { UserStatus::Suspended } else { UserStatus::Active };
            let selector = StatusSelector::Ids(thousand_ids.clone());
            async move { directory.set_status(status, &selector).await.unwrap() }
        });
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("list_filtered_page_1", |b| {
        b.to_async(runtime).iter(|| async { directory.list_users(&filtered_list()).await.unwrap() });
    });
    group.bench_function("list_filtered_page_2_token", |b| {
        let query = ListQuery { page_token: second_page_token.clone(), ..filtered_list() };
        b.to_async(runtime).iter(|| async { directory.list_users(&query).await.unwrap() });
    });
    group.bench_function("list_username_wildcard", |b| {
        b.to_async(runtime).iter(|| async { directory.list_users(&wildcard_list()).await.unwrap() });
    });
    group.bench_function("search_selective", |b| {
        b.to_async(runtime).iter(|| async { directory.search_users("user01234", 20, None).await.unwrap() });
    });
    group.bench_function("search_two_words", |b| {
        b.to_async(runtime).iter(|| async { directory.search_users("mail7 ticket 4242", 20, None).await.unwrap() });
    });
    group.bench_function("search_broad_ranked", |b| {
        b.to_async(runtime).iter(|| async { directory.search_users("pro", 20, None).await.unwrap() });
    });
    group.bench_function("get_users_100", |b| {
        let ids = sample_ids[1000..1100].to_vec();
        b.to_async(runtime).iter(|| async { directory.get_users(&ids, BatchMode::PerItem).await.unwrap() });
    });
    group.sample_size(10);
    group.bench_function("stats", |b| {
        b.to_async(runtime).iter(|| async { directory.stats(30).await.unwrap() });
    });
    group.finish();

    let measure = |name: &str, runs: usize, operation: &dyn Fn() -> Duration| {
        let mut latencies: Vec<Duration> = (0..runs).map(|_| operation()).collect();
        println!("vpnusers/{backend}/{count}/{name}: {}", percentiles(&mut latencies));
    };
    let timed = |future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>| {
        let started = Instant::now();
        runtime.block_on(future);
        started.elapsed()
    };
    measure("list_filtered_page_1", PERCENTILE_RUNS, &|| {
        timed(Box::pin(async {
            directory.list_users(&filtered_list()).await.unwrap();
        }))
    });
    measure("list_username_wildcard", PERCENTILE_RUNS, &|| {
        timed(Box::pin(async {
            directory.list_users(&wildcard_list()).await.unwrap();
        }))
    });
    measure("search_selective", PERCENTILE_RUNS, &|| {
        timed(Box::pin(async {
            directory.search_users("user01234", 20, None).await.unwrap();
        }))
    });
    measure("search_two_words", PERCENTILE_RUNS, &|| {
        timed(Box::pin(async {
            directory.search_users("mail7 ticket 4242", 20, None).await.unwrap();
        }))
    });
    measure("set_status_1000_ids", 200, &|| {
        timed(Box::pin(async {
            directory.set_status(UserStatus::Expired, &StatusSelector::Ids(thousand_ids.clone())).await.unwrap();
        }))
    });
    println!("vpnusers/{backend}/{count}: {} after the measurements", load_average());
}
