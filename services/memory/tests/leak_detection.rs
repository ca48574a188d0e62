//! A service that holds 768 KiB more every second is flagged as leaking
//! within 60 s at a 1 s interval, with MEDIUM severity: 10 snapshots span
//! 9 s, so the window grows about 6.75 MiB, between 2x and 5x the 2 MiB
//! threshold. Its own binary, so no other test's memory moves this process.

mod support;

use std::time::{Duration, Instant};

use mesh_proto::memory::v1 as pb;
use support::{one_second_settings, start_profiler, start_test_service};

const LEAK_BYTES_PER_SECOND: usize = 768 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_leak_is_flagged_within_a_minute_with_medium_severity() {
    let leaky = start_test_service("leak_bytes", |_tick, held| held.hold(LEAK_BYTES_PER_SECOND)).await;
    let (_profiler, mut client) = start_profiler(&one_second_settings(format!("leaky={}", leaky.uri))).await;
    let started = Instant::now();
    let mut alerts = client.watch_alerts(pb::WatchAlertsRequest::default()).await.expect("watch").into_inner();

    let mut gauge_alert = None;
    let mut allocator_alert = None;
    while gauge_alert.is_none() || allocator_alert.is_none() {
        let remaining = Duration::from_secs(60).saturating_sub(started.elapsed());
        let alert = tokio::time::timeout(remaining, alerts.message())
            .await
            .expect("the leak is flagged within 60 s")
            .expect("alert stream")
            .expect("alert stream stays open");
        let leak = alert.leak.clone().expect("alerts carry the leak");
        assert_eq!(leak.service, "leaky");
        match leak.series.as_str() {
            "gauge:leak_bytes" if gauge_alert.is_none() => gauge_alert = Some(alert),
            "allocated_bytes" if allocator_alert.is_none() => allocator_alert = Some(alert),
            _ => {}
        }
    }

    let gauge_alert = gauge_alert.expect("gauge alert");
    assert_eq!(gauge_alert.kind(), pb::AlertKind::Raised);
    let gauge_leak = gauge_alert.leak.expect("leak");
    assert_eq!(gauge_leak.severity(), pb::LeakSeverity::Medium, "{gauge_leak:?}");
    let growth_mib_per_second = gauge_leak.growth_bytes_per_hour / 3600.0 / 1024.0 / 1024.0;
    assert!((0.6..0.9).contains(&growth_mib_per_second), "{growth_mib_per_second} MiB/s");
    assert!(gauge_leak.fit_r_squared > 0.9, "{gauge_leak:?}");

    let report = client
        .get_report(pb::GetReportRequest::default())
        .await
        .expect("report")
        .into_inner()
        .report
        .expect("report body");
    assert_eq!(report.services[0].health(), pb::MemoryHealth::Degraded, "{report:?}");
    assert!(report.leaks.iter().any(|leak| leak.series == "gauge:leak_bytes"), "{report:?}");
    assert!(
        report
            .recommendations
            .iter()
            .any(|r| r.starts_with("leaky: possible memory leak") && r.contains("HeapProfile")),
        "{:?}",
        report.recommendations
    );
    assert!(report.top_consumers.iter().any(|consumer| consumer.part == "leak_bytes"), "{report:?}");
}
