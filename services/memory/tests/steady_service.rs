//! A steady service whose memory saws up and down (0 to 4 MiB over 5 s,
//! then all freed) is never flagged, under the same settings that flag the
//! leak in `leak_detection.rs`, over 45 snapshots taken once it has warmed up. Its own binary, so no
//! other test's memory moves this process.

mod support;

use std::time::Duration;

use mesh_proto::memory::v1 as pb;
use support::{introspection_client, one_second_settings, start_profiler, start_test_service};

const STEP_BYTES: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sawtooth_is_never_flagged() {
    let steady = start_test_service("sawtooth_bytes", |tick, held| {
        if tick % 5 == 4 {
            // The test services and the profiler share this process:
            // without the purge, jemalloc's 10 s decay keeps the freed
            // pages resident and turns the sawtooth into a staircase
            // of resident memory, the allocator's lag rather than the
            // service's shape.
            held.release_all();
            mesh_kit::allocator::purge().expect("jemalloc purges");
        } else {
            held.hold(STEP_BYTES);
        }
    })
    .await;
    wait_for_one_full_cycle(&steady.uri).await;
    let (_profiler, mut client) = start_profiler(&one_second_settings(format!("steady={}", steady.uri))).await;
    let mut alerts = client.watch_alerts(pb::WatchAlertsRequest::default()).await.expect("watch").into_inner();

    let waited = tokio::time::timeout(Duration::from_secs(45), alerts.message()).await;
    let snapshots = client
        .list_snapshots(pb::ListSnapshotsRequest { service: "steady".into(), ..Default::default() })
        .await
        .expect("list")
        .into_inner()
        .snapshots;
    let resident_kib: Vec<u64> =
        snapshots.iter().rev().filter_map(|s| s.process.as_ref()).map(|p| p.resident_bytes / 1024).collect();
    assert!(waited.is_err(), "no alert in 45 s, got {waited:?}; resident KiB, oldest first: {resident_kib:?}");
    assert!(snapshots.len() >= 40, "the profiler ran all along ({} snapshots)", snapshots.len());
    let gauge_values: Vec<u64> =
        snapshots.iter().filter_map(|s| s.gauges.first()).map(|gauge| gauge.value / STEP_BYTES as u64).collect();
    assert!(gauge_values.contains(&0) && gauge_values.iter().any(|v| *v >= 3), "a sawtooth: {gauge_values:?}");

    let report = client
        .get_report(pb::GetReportRequest::default())
        .await
        .expect("report")
        .into_inner()
        .report
        .expect("report body");
    assert!(report.leaks.is_empty(), "{:?}", report.leaks);
    assert_eq!(report.services[0].health(), pb::MemoryHealth::Healthy, "{report:?}");
}

/// Waits until the service has sawed up to its peak and back once, so the
/// profiler watches a warmed-up process (a fresh process's resident memory
/// climbs while its allocator and runtime take their first pages).
async fn wait_for_one_full_cycle(uri: &str) {
    let mut client = introspection_client(uri).await;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut reached_peak = false;
    loop {
        poll.tick().await;
        let stats = client.get_memory_stats(pb::GetMemoryStatsRequest {}).await.expect("stats").into_inner();
        let held_bytes = stats.gauges.first().expect("the sawtooth gauge").value;
        reached_peak |= held_bytes >= 4 * STEP_BYTES as u64;
        if reached_peak && held_bytes == 0 {
            return;
        }
    }
}
