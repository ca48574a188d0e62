//! The Cache service called through the gateway with the generated client:
//! the happy paths, every kind of bad input, and the memory budget.

use mesh_proto::cache::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::TestMesh;

#[allow(clippy::unnecessary_wraps)] // fills an `Option` field
fn ttl(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn entry(key: &str, value: &[u8], tags: &[&str]) -> pb::CacheEntry {
    pb::CacheEntry {
        key: key.into(),
        value: value.to_vec(),
        ttl: ttl(60),
        tags: tags.iter().map(|t| (*t).into()).collect(),
    }
}

#[tokio::test]
async fn set_get_delete_and_batches_work_through_the_gateway() {
    let mesh = TestMesh::start().await;
    let mut cache = mesh.cache().await;

    let set = pb::SetRequest {
        key: "user:1".into(),
        value: b"alice".to_vec(),
        ttl: ttl(60),
        tags: vec!["users".into()],
        ..Default::default()
    };
    let stored = cache.set(set).await.unwrap().into_inner();
    assert!(stored.expire_time.is_some());

    let got = cache.get(pb::GetRequest { key: "user:1".into() }).await.unwrap().into_inner();
    assert!(got.found);
    assert_eq!(got.value, b"alice");
    assert_eq!(got.tags, vec!["users".to_owned()]);

    let many = pb::SetManyRequest {
        entries: vec![entry("user:2", b"bob", &["users"]), entry("", b"x", &[]), entry("post:1", b"p", &["posts"])],
    };
    let results = cache.set_many(many).await.unwrap().into_inner();
    assert_eq!(results.stored_count, 2);
    let codes: Vec<i32> = results.results.iter().map(|r| r.status.as_ref().map_or(-1, |s| s.code)).collect();
    assert_eq!(codes, vec![Code::Ok as i32, Code::InvalidArgument as i32, Code::Ok as i32]);

    let fetched = cache
        .get_many(pb::GetManyRequest { keys: vec!["user:1".into(), "nope".into(), "user:2".into()] })
        .await
        .unwrap()
        .into_inner();
    let found: Vec<bool> = fetched.entries.iter().map(|e| e.found).collect();
    assert_eq!(found, vec![true, false, true]);

    let removed =
        cache.invalidate_tags(pb::InvalidateTagsRequest { tags: vec!["users".into()] }).await.unwrap().into_inner();
    assert_eq!(removed.removed_count, 2);
    assert!(!cache.get(pb::GetRequest { key: "user:2".into() }).await.unwrap().into_inner().found);

    let glob = pb::InvalidatePatternRequest { pattern: "post:*".into(), syntax: pb::PatternSyntax::Glob.into() };
    assert_eq!(cache.invalidate_pattern(glob).await.unwrap().into_inner().removed_count, 1);

    cache.set(pb::SetRequest { key: "gone".into(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
    assert!(cache.delete(pb::DeleteRequest { key: "gone".into() }).await.unwrap().into_inner().deleted);
    assert!(!cache.delete(pb::DeleteRequest { key: "gone".into() }).await.unwrap().into_inner().deleted);

    let stats = cache.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert!(stats.hits >= 3 && stats.misses >= 2, "{stats:?}");
}

#[tokio::test]
async fn warm_streams_batches_and_keeps_existing_keys() {
    let mesh = TestMesh::start().await;
    let mut cache = mesh.cache().await;
    cache.set(pb::SetRequest { key: "w:0".into(), value: b"fresh".to_vec(), ..Default::default() }).await.unwrap();
    let batches = (0..5).map(|batch| pb::WarmRequest {
        entries: (0..100).map(|i| entry(&format!("w:{}", batch * 100 + i), b"warm", &["warm"])).collect(),
        overwrite: false,
    });
    let response = cache.warm(tokio_stream::iter(batches)).await.unwrap().into_inner();
    assert_eq!(response.loaded_count, 499);
    assert_eq!(response.skipped_count, 1);
    assert!(response.rejected.is_empty());
    assert_eq!(cache.get(pb::GetRequest { key: "w:0".into() }).await.unwrap().into_inner().value, b"fresh");
    assert_eq!(cache.get(pb::GetRequest { key: "w:499".into() }).await.unwrap().into_inner().value, b"warm");
}

#[tokio::test]
async fn get_or_lease_gives_one_lease_and_fills_the_waiters() {
    let mesh = TestMesh::start().await;
    let mut first = mesh.cache().await;
    let request = |wait_ms: i32| pb::GetOrLeaseRequest {
        key: "lazy".into(),
        lease_ttl: ttl(30),
        max_wait: Some(prost_types::Duration { seconds: 0, nanos: wait_ms * 1_000_000 }),
    };
    let leased = first.get_or_lease(request(0)).await.unwrap().into_inner();
    assert_eq!(leased.outcome, pb::LeaseOutcome::Leased as i32);

    let mut waiter_client = mesh.cache().await;
    let waiter = tokio::spawn(async move { waiter_client.get_or_lease(request(900)).await });
    let mut retry_client = mesh.cache().await;
    let told_to_retry = retry_client.get_or_lease(request(0)).await.unwrap().into_inner();
    assert_eq!(told_to_retry.outcome, pb::LeaseOutcome::Retry as i32);

    let fill = pb::SetRequest {
        key: "lazy".into(),
        value: b"from-db".to_vec(),
        lease_id: leased.lease_id.clone(),
        ..Default::default()
    };
    first.set(fill).await.unwrap();
    let filled = waiter.await.unwrap().unwrap().into_inner();
    assert!(filled.outcome == pb::LeaseOutcome::Filled as i32 || filled.outcome == pb::LeaseOutcome::Hit as i32);
    assert_eq!(filled.value, b"from-db");
}

fn expect_rejected<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, reason: &str) {
    let status = result.expect_err("bad input is refused");
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(details.error_info().map(|i| i.reason.as_str()), Some(reason), "{status:?}");
}

#[tokio::test]
async fn bad_input_gets_a_precise_status_and_the_server_keeps_serving() {
    let mesh = TestMesh::start().await;
    let mut cache = mesh.cache().await;
    let set = |key: &str, value: Vec<u8>, ttl: Option<prost_types::Duration>| pb::SetRequest {
        key: key.into(),
        value,
        ttl,
        ..Default::default()
    };

    expect_rejected(cache.get(pb::GetRequest { key: String::new() }).await, Code::InvalidArgument, "EMPTY_KEY");
    expect_rejected(
        cache.set(set(&"k".repeat(5000), b"v".to_vec(), None)).await,
        Code::InvalidArgument,
        "KEY_TOO_LARGE",
    );
    // Larger than the gateway's message limit (4 MiB, as the cache's value
    // limit): the gateway refuses it before the cache sees it.
    expect_rejected(
        cache.set(set("big", vec![0; 5 * 1024 * 1024], None)).await,
        Code::ResourceExhausted,
        "REQUEST_MESSAGE_TOO_LARGE",
    );
    expect_rejected(cache.set(set("neg", b"v".to_vec(), ttl(-5))).await, Code::InvalidArgument, "INVALID_TTL");
    expect_rejected(cache.set(set("zero", b"v".to_vec(), ttl(0))).await, Code::InvalidArgument, "INVALID_TTL");
    expect_rejected(
        cache.set(set("absurd", b"v".to_vec(), ttl(100 * 365 * 86_400))).await,
        Code::InvalidArgument,
        "INVALID_TTL",
    );
    let regex = |pattern: &str| pb::InvalidatePatternRequest {
        pattern: pattern.into(),
        syntax: pb::PatternSyntax::Regex.into(),
    };
    expect_rejected(cache.invalidate_pattern(regex("user:(unclosed")).await, Code::InvalidArgument, "INVALID_PATTERN");
    expect_rejected(cache.invalidate_pattern(regex("(a)\\1")).await, Code::InvalidArgument, "INVALID_PATTERN");
    expect_rejected(
        cache.invalidate_pattern(regex("(?:(?:a{100}){100}){100}")).await,
        Code::InvalidArgument,
        "PATTERN_TOO_COMPLEX",
    );
    let fill =
        pb::SetRequest { key: "k".into(), value: b"v".to_vec(), lease_id: "not-a-lease".into(), ..Default::default() };
    expect_rejected(cache.set(fill).await, Code::FailedPrecondition, "LEASE_NOT_FOUND");
    let release = pb::ReleaseLeaseRequest { key: "k".into(), lease_id: "not-a-lease".into() };
    expect_rejected(cache.release_lease(release).await, Code::FailedPrecondition, "LEASE_NOT_FOUND");

    // Nothing was half-written, and the server still serves.
    for key in ["big", "neg", "zero", "absurd", "k"] {
        assert!(!cache.get(pb::GetRequest { key: key.into() }).await.unwrap().into_inner().found, "{key}");
    }
    cache.set(set("after", b"ok".to_vec(), None)).await.unwrap();
    assert!(cache.get(pb::GetRequest { key: "after".into() }).await.unwrap().into_inner().found);
}

#[tokio::test]
async fn an_unknown_service_is_unimplemented_and_named() {
    let mesh = TestMesh::start().await;
    let mut grpc = tonic::client::Grpc::new(mesh.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/mesh.nope.v1.Nope/Get");
    let codec = tonic_prost::ProstCodec::<pb::GetRequest, pb::GetResponse>::default();
    let status = grpc.unary(tonic::Request::new(pb::GetRequest { key: "k".into() }), path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("mesh.nope.v1.Nope"), "{}", status.message());
}

#[tokio::test]
async fn inserting_three_times_the_budget_never_holds_more_than_the_budget() {
    let mesh =
        TestMesh::start_with_env(&[("MESH_CACHE_MAX_MEMORY_MB", "1"), ("MESH_CACHE_MAX_VALUE_BYTES", "65536")]).await;
    let mut cache = mesh.cache().await;
    let budget_bytes = 1024 * 1024;
    let value = vec![7u8; 16 * 1024];
    for batch in 0..12 {
        let entries = (0..16).map(|i| entry(&format!("blob:{batch}:{i}"), &value, &["blobs"])).collect();
        let stored = cache.set_many(pb::SetManyRequest { entries }).await.unwrap().into_inner();
        assert_eq!(stored.stored_count, 16);
        let stats = cache.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
        assert_eq!(stats.memory_budget_bytes, budget_bytes);
        assert!(stats.memory_used_bytes <= budget_bytes, "batch {batch}: {} > {budget_bytes}", stats.memory_used_bytes);
    }
    let stats = cache.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert!(stats.evictions > 0, "3 MiB into a 1 MiB budget must evict: {stats:?}");
    let blobs = stats.tag_counts.iter().find(|t| t.tag == "blobs").map_or(0, |t| t.key_count);
    assert_eq!(blobs, stats.entries, "the tag index holds only live keys");
    let health = cache.get_health(pb::GetHealthRequest {}).await.unwrap().into_inner();
    assert!(health.memory_used_ratio <= 1.0);
}
