//! Sequential vs batched `DockerOps` calls against the real engine, in one run:
//! starting 10 containers and reading the stats of 20, through a real
//! server on `127.0.0.1:0` and the generated client.
//!
//! "Sequential" is one call per container, each awaited before the next (how
//! a caller without batch calls does it); "batched" is one call for all of
//! them at the given concurrency. Each figure is the median of 7 rounds
//! (`MESH_BENCH_DOCKER_ROUNDS` changes it: `bench/run --quick` asks for 1);
//! between start rounds the containers are stopped again (untimed).
//! Run with `cargo bench -p mesh-docker --bench batch_vs_sequential`; under
//! `cargo test` it does nothing, so the test suite does not time anything.
//! Its containers and its image are removed when the harnesses drop, also
//! when it panics (`tests/support`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use mesh_kit::ConfigSource;
use mesh_proto::docker::v1 as pb;
use support::{TestDockerOps, assert_ok};

/// Rounds per figure unless `MESH_BENCH_DOCKER_ROUNDS` says otherwise; the median is reported.
const DEFAULT_ROUNDS: usize = 7;

fn main() {
    let is_bench = std::env::args().any(|arg| arg == "--bench");
    if !is_bench {
        println!("batch_vs_sequential: skipped (run it with `cargo bench`)");
        return;
    }
    let source = ConfigSource::from_process();
    let rounds = match source.var("MESH_BENCH_DOCKER_ROUNDS") {
        None => DEFAULT_ROUNDS,
        Some(text) => match text.parse::<usize>() {
            Ok(rounds) if rounds > 0 => rounds,
            _ => panic!("MESH_BENCH_DOCKER_ROUNDS must be a positive number of rounds, got {text:?}"),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(run(rounds));
}

async fn run(rounds: usize) {
    let mut mesh = TestDockerOps::start().await;
    let stats_ids = mesh.create_managed(20, true).await;
    let start_ids = mesh.create_managed(10, false).await;

    println!("start 10 containers (median of {rounds})");
    report("sequential, 10 calls", time_starts(&mut mesh, &start_ids, None, rounds).await);
    for max_concurrent in [5, 10] {
        let median = time_starts(&mut mesh, &start_ids, Some(max_concurrent), rounds).await;
        report(&format!("batched, 1 call, max_concurrent {max_concurrent}"), median);
    }
    // The rows above are containers on the engine's default bridge network.
    // The same batched start of 10 on containers whose spec names another
    // network mode shows what the engine's network set-up costs: `none`
    // still gets a network namespace of its own, `host` none at all. They
    // are removed before the stats rows, which so run beside the same
    // containers as before.
    for network_mode in ["none", "host"] {
        let ids = mesh.create_managed_on_network(10, false, network_mode).await;
        let median = time_starts(&mut mesh, &ids, Some(10), rounds).await;
        report(&format!("batched, 1 call, max_concurrent 10, network {network_mode}"), median);
        remove_containers(&mut mesh, ids).await;
    }

    // One-shot sampling, as without live feeds: a second server on the same
    // containers with feeds off.
    let namespace_label = mesh.namespace_label();
    let mut one_shot = TestDockerOps::start_with(&[
        ("MESH_DOCKER_STATS_FEED_IDLE", "0"),
        ("MESH_DOCKER_NAMESPACE_LABEL", namespace_label.as_str()),
    ])
    .await;
    println!("stats of 20 running containers, feeds off: one-shot samples (median of {rounds})");
    for window_ms in [0u64, 200] {
        let window = Duration::from_millis(window_ms);
        let mut sequential = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            sequential.push(stats_one_by_one(&mut one_shot, &stats_ids, window).await);
        }
        report(&format!("sequential, 20 calls, cpu window {window_ms} ms"), median(sequential));
        for max_concurrent in [5, 10] {
            let mut batched = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                batched.push(stats_batched(&mut one_shot, &stats_ids, window, max_concurrent).await);
            }
            let label = format!("batched, 1 call, max_concurrent {max_concurrent}, cpu window {window_ms} ms");
            report(&label, median(batched));
        }
    }

    println!("stats of 20 running containers, live feeds (the default; median of {rounds})");
    let first = stats_batched(&mut mesh, &stats_ids, Duration::from_millis(200), 10).await;
    report("first call (starts the feeds), max_concurrent 10", first);
    for window_ms in [0u64, 200] {
        let window = Duration::from_millis(window_ms);
        for max_concurrent in [5, 10] {
            let mut batched = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                batched.push(stats_batched(&mut mesh, &stats_ids, window, max_concurrent).await);
            }
            let label = format!("later calls, max_concurrent {max_concurrent}, cpu window {window_ms} ms");
            report(&label, median(batched));
        }
    }
    mesh.cleanup.remove_all();
}

fn report(label: &str, median: Duration) {
    println!("  {label:<58} {:>8.1} ms", median.as_secs_f64() * 1000.0);
}

fn median(mut durations: Vec<Duration>) -> Duration {
    durations.sort();
    durations[durations.len() / 2]
}

/// Times starting `ids` over `rounds` rounds, one call per container when
/// `batched_concurrency` is `None`, stopping them (untimed) before each round.
async fn time_starts(
    mesh: &mut TestDockerOps,
    ids: &[String],
    batched_concurrency: Option<u32>,
    rounds: usize,
) -> Duration {
    let mut durations = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let stopped = mesh
            .client
            .stop_containers(pb::StopContainersRequest {
                container_ids: ids.to_vec(),
                max_concurrent: 10,
                stop_timeout: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
            })
            .await
            .expect("stop")
            .into_inner();
        stopped.results.iter().for_each(|r| assert_ok(r.result.as_ref()));
        let started_at = Instant::now();
        match batched_concurrency {
            None => start_one_by_one(mesh, ids.to_vec()).await,
            Some(max_concurrent) => start_batched(mesh, ids.to_vec(), max_concurrent).await,
        }
        durations.push(started_at.elapsed());
    }
    median(durations)
}

async fn remove_containers(mesh: &mut TestDockerOps, ids: Vec<String>) {
    let request =
        pb::RemoveContainersRequest { container_ids: ids, force: true, remove_volumes: true, max_concurrent: 10 };
    let response = mesh.client.remove_containers(request).await.expect("remove").into_inner();
    response.results.iter().for_each(|r| assert_ok(r.result.as_ref()));
}

async fn start_one_by_one(mesh: &mut TestDockerOps, ids: Vec<String>) {
    for id in ids {
        let request = pb::StartContainersRequest { container_ids: vec![id], max_concurrent: 1 };
        let response = mesh.client.start_containers(request).await.expect("start").into_inner();
        assert_ok(response.results[0].result.as_ref());
    }
}

async fn start_batched(mesh: &mut TestDockerOps, ids: Vec<String>, max_concurrent: u32) {
    let request = pb::StartContainersRequest { container_ids: ids, max_concurrent };
    let response = mesh.client.start_containers(request).await.expect("start").into_inner();
    response.results.iter().for_each(|r| assert_ok(r.result.as_ref()));
}

fn window_to_wire(window: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(window).ok()
}

async fn stats_one_by_one(mesh: &mut TestDockerOps, ids: &[String], window: Duration) -> Duration {
    let started_at = Instant::now();
    for id in ids {
        let request = pb::GetStatsRequest {
            container_ids: vec![id.clone()],
            max_concurrent: 1,
            cpu_sample_window: window_to_wire(window),
        };
        let response = mesh.client.get_stats(request).await.expect("stats").into_inner();
        assert_ok(response.stats[0].result.as_ref());
    }
    started_at.elapsed()
}

async fn stats_batched(mesh: &mut TestDockerOps, ids: &[String], window: Duration, max_concurrent: u32) -> Duration {
    let started_at = Instant::now();
    let request =
        pb::GetStatsRequest { container_ids: ids.to_vec(), max_concurrent, cpu_sample_window: window_to_wire(window) };
    let response = mesh.client.get_stats(request).await.expect("stats").into_inner();
    response.stats.iter().for_each(|s| assert_ok(s.result.as_ref()));
    started_at.elapsed()
}
