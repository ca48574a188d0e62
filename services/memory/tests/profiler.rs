//! The profiler and `MemoryIntrospection` over real gRPC: heap profiles
//! decode as pprof, an unreachable service is marked so while the others'
//! snapshots go on, and snapshots can be paged and compared.

mod support;

use std::io::Read;
use std::sync::Arc;

use mesh_kit::{MeshServer, ServerSettings};
use mesh_proto::memory::v1 as pb;
use prost::Message;
use support::{introspection_client, start_mesh_server, start_profiler};
use tonic::Code;
use tonic_types::StatusExt;

/// The parts of pprof's `perftools.profiles.Profile` the test reads.
#[derive(Clone, PartialEq, prost::Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
}

#[tokio::test]
async fn a_heap_profile_decodes_as_pprof() {
    let settings = ServerSettings { heap_profiling: true, ..ServerSettings::default() };
    let server = start_mesh_server(MeshServer::new(settings)).await;
    let mut client = introspection_client(&server.uri).await;
    // Sampled once per 512 KiB on average: 32 MiB held is sure to show.
    let held: Vec<Vec<u8>> = (0..32).map(|_| vec![1_u8; 1024 * 1024]).collect();

    let response = client.heap_profile(pb::HeapProfileRequest {}).await.expect("heap profile").into_inner();
    let mut encoded = Vec::new();
    flate2::read::GzDecoder::new(response.pprof_gzip.as_slice()).read_to_end(&mut encoded).expect("gzip");
    let profile = Profile::decode(encoded.as_slice()).expect("a pprof Profile");

    assert_eq!(response.sample_interval_bytes, 512 * 1024);
    let sample_type = profile.sample_type.first().expect("a sample type");
    let name = |index: i64| profile.string_table[usize::try_from(index).unwrap()].as_str();
    assert_eq!((name(sample_type.r#type), name(sample_type.unit)), ("inuse_space", "bytes"));
    let sampled_bytes: i64 = profile.sample.iter().filter_map(|sample| sample.value.first()).sum();
    assert!(sampled_bytes >= 16 * 1024 * 1024, "{sampled_bytes} bytes sampled");
    assert!(profile.sample.iter().all(|sample| !sample.location_id.is_empty()));
    assert!(!profile.location.is_empty());
    drop(held);
}

#[tokio::test]
async fn heap_profiles_are_refused_unless_enabled_and_stats_are_real() {
    let server = start_mesh_server(
        MeshServer::new(ServerSettings::default()).with_memory_gauge("open_connections", Arc::new(|| 7)),
    )
    .await;
    let mut client = introspection_client(&server.uri).await;

    let refused = client.heap_profile(pb::HeapProfileRequest {}).await.expect_err("profiling is off");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("MESH_SERVER_HEAP_PROFILING"), "{}", refused.message());
    assert_eq!(refused.get_error_details().error_info().expect("error info").reason, "HEAP_PROFILING_DISABLED");

    let stats = client.get_memory_stats(pb::GetMemoryStatsRequest {}).await.expect("stats").into_inner();
    let process = stats.process.expect("process figures");
    let allocator = stats.allocator.expect("this binary allocates through jemalloc");
    assert!(process.resident_bytes > 0 && process.limit_bytes > 0, "{process:?}");
    assert!(process.proportional_bytes.is_some(), "smaps_rollup is readable on linux");
    assert!(allocator.allocated_bytes > 0 && allocator.active_bytes >= allocator.allocated_bytes, "{allocator:?}");
    assert!(allocator.resident_bytes >= allocator.active_bytes, "{allocator:?}");
    assert_eq!(stats.gauges, [pb::MemoryGauge { name: "open_connections".into(), value: 7 }]);

    // 64 MiB freed stays as dirty pages until jemalloc's decay (10 s) or a purge.
    drop(std::hint::black_box((0..64).map(|_| vec![1_u8; 1024 * 1024]).collect::<Vec<_>>()));
    let purged = client.purge(pb::PurgeRequest {}).await.expect("purge").into_inner();
    assert!(
        purged.allocator_resident_after_bytes < purged.allocator_resident_before_bytes,
        "the purge returns pages: {purged:?}"
    );
}

#[tokio::test]
async fn an_unreachable_service_does_not_stop_the_others() {
    let alive = start_mesh_server(MeshServer::new(ServerSettings::default())).await;
    let dead_uri = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let settings = [
        ("TARGETS", format!("dead={dead_uri},alive={}", alive.uri)),
        ("SNAPSHOT_INTERVAL", "3600".to_owned()),
        ("PROBE_TIMEOUT", "2".to_owned()),
    ];
    let (_profiler, mut client) = start_profiler(&settings).await;

    for _ in 0..3 {
        let snapshots = client
            .trigger_snapshot(pb::TriggerSnapshotRequest::default())
            .await
            .expect("trigger")
            .into_inner()
            .snapshots;
        let dead = snapshots.iter().find(|s| s.service == "dead").expect("a dead snapshot");
        let alive = snapshots.iter().find(|s| s.service == "alive").expect("an alive snapshot");
        assert_eq!(dead.reachability(), pb::Reachability::Unreachable);
        assert_eq!(dead.probe_status.as_ref().expect("why").code, Code::Unavailable as i32);
        assert!(dead.process.is_none());
        assert_eq!(alive.reachability(), pb::Reachability::Reachable);
        assert!(alive.process.as_ref().expect("figures").resident_bytes > 0);
    }

    let report = client
        .get_report(pb::GetReportRequest::default())
        .await
        .expect("report")
        .into_inner()
        .report
        .expect("report body");
    let health: Vec<(String, pb::MemoryHealth)> =
        report.services.iter().map(|service| (service.service.clone(), service.health())).collect();
    assert_eq!(
        health,
        [("alive".to_owned(), pb::MemoryHealth::Healthy), ("dead".to_owned(), pb::MemoryHealth::Unreachable)]
    );
    assert!(report.recommendations.iter().any(|r| r.starts_with("dead is unreachable")), "{report:?}");

    // The schedule's first round (at start) plus three triggered ones; paged two at a time.
    let first_page = client
        .list_snapshots(pb::ListSnapshotsRequest { service: "alive".into(), page_size: 2, page_token: String::new() })
        .await
        .expect("first page")
        .into_inner();
    assert_eq!(first_page.snapshots.len(), 2);
    assert!(first_page.snapshots[0].snapshot_id > first_page.snapshots[1].snapshot_id, "newest first");
    let second_page = client
        .list_snapshots(pb::ListSnapshotsRequest {
            service: "alive".into(),
            page_size: 2,
            page_token: first_page.next_page_token.clone(),
        })
        .await
        .expect("second page")
        .into_inner();
    assert_eq!(second_page.snapshots.len(), 2);
    assert!(second_page.next_page_token.is_empty(), "4 snapshots fill two pages");

    let (newest, oldest) = (&first_page.snapshots[0], &second_page.snapshots[1]);
    let comparison = client
        .compare_snapshots(pb::CompareSnapshotsRequest {
            from_snapshot_id: oldest.snapshot_id,
            to_snapshot_id: newest.snapshot_id,
        })
        .await
        .expect("compare")
        .into_inner();
    assert_eq!(comparison.service, "alive");
    assert!(comparison.deltas.iter().any(|delta| delta.series == "resident_bytes"));

    let unknown = client
        .list_snapshots(pb::ListSnapshotsRequest { service: "nope".into(), ..Default::default() })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
}
