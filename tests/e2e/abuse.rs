//! HTTP/2 and gRPC abuse against the gateway of a real `mesh up`, with the
//! `h2` crate as a misbehaving client: rapid reset, header lists over the
//! limit, malformed and oversized gRPC frames, a slow-drip body, thousands
//! of idle connections and 500 calls cancelled in flight. Each test checks
//! that the offender gets the error the protocol prescribes, that a
//! well-behaved caller on its own connection is still served, and that the
//! process's resident memory stays bounded. Every loop is bounded and stays
//! on loopback.

use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use mesh_proto::cache::v1 as pb;
use prost::Message;

use crate::harness::TestMesh;
use crate::raw_call::{call_with_body, finish_call, grpc_frame, grpc_head, h2_connect};

/// How much the mesh's resident memory may grow across one abuse; far above
/// what serving the abuse needs, far below what a leak per stream or per
/// connection would take.
const MAX_RSS_GROWTH_KIB: u64 = 128 * 1024;

/// The mesh process's resident set size, in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status is readable");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS is in /proc/<pid>/status")
}

/// Asserts that the memory grew by less than [`MAX_RSS_GROWTH_KIB`] since `before_kib`.
fn assert_rss_bounded(mesh: &TestMesh, before_kib: u64, abuse: &str) {
    let after_kib = rss_kib(mesh.pid());
    let growth_kib = after_kib.saturating_sub(before_kib);
    println!("{abuse}: RSS {before_kib} KiB -> {after_kib} KiB");
    assert!(growth_kib < MAX_RSS_GROWTH_KIB, "{abuse}: RSS grew by {growth_kib} KiB");
}

/// Asserts that a well-behaved caller on a connection of its own is served.
async fn assert_other_callers_served(mesh: &TestMesh, during: &str) {
    let mut cache = mesh.cache().await;
    let key = format!("abuse:{during}");
    let set = pb::SetRequest { key: key.clone(), value: b"served".to_vec(), ..Default::default() };
    cache.set(set).await.unwrap_or_else(|status| panic!("Set failed during {during}: {status:?}"));
    let got = cache
        .get(pb::GetRequest { key })
        .await
        .unwrap_or_else(|status| panic!("Get failed during {during}: {status:?}"));
    assert_eq!(got.into_inner().value, b"served", "{during}");
}

fn get_request_bytes(key: &str) -> Vec<u8> {
    pb::GetRequest { key: key.into() }.encode_to_vec()
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_others_are_served() {
    /// Far more than `MESH_GATEWAY_MAX_PENDING_ACCEPT_RESET_STREAMS` (1024).
    const RESETS: usize = 20_000;
    let mesh = TestMesh::start().await;
    assert_other_callers_served(&mesh, "warm-up").await;
    let before_kib = rss_kib(mesh.pid());

    let (mut send_request, connection) = h2_connect(&mesh).await;
    let mut opened = 0;
    for _ in 0..RESETS {
        let Ok(ready) = send_request.clone().ready().await else { break };
        send_request = ready;
        let head = grpc_head(&mesh, "/mesh.cache.v1.Cache/Get").body(()).unwrap();
        let Ok((_response, mut stream)) = send_request.send_request(head, false) else { break };
        stream.send_reset(Reason::CANCEL);
        opened += 1;
        if opened % 50 == 0 {
            // Let the connection task read what the gateway sent (a GOAWAY);
            // on this single-threaded runtime nothing else would.
            tokio::task::yield_now().await;
        }
    }
    println!("rapid reset: {opened} streams opened and reset");
    drop(send_request);
    let ended = tokio::time::timeout(Duration::from_secs(30), connection)
        .await
        .expect("the connection ends")
        .expect("the connection task does not panic");
    // The gateway sends GOAWAY (hyper offers only NO_ERROR) and refuses new
    // streams: the attacker cannot open them all, and its connection ends.
    if let Err(error) = ended {
        assert!(error.is_go_away() && error.is_remote() || error.is_io(), "{error:?} after {opened} streams");
    }
    assert!(opened < RESETS, "the gateway accepted all {opened} reset streams");

    assert_other_callers_served(&mesh, "rapid reset").await;
    assert_rss_bounded(&mesh, before_kib, "rapid reset");
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_refused() {
    let mesh = TestMesh::start().await;
    let before_kib = rss_kib(mesh.pid());

    // Just over `MESH_GATEWAY_MAX_HEADER_LIST_BYTES` (16 KiB): the stream is
    // answered 431 and the connection lives on.
    let (mut send_request, connection) = h2_connect(&mesh).await;
    let head = grpc_head(&mesh, "/mesh.cache.v1.Cache/Get").header("x-padding", "a".repeat(20 * 1024));
    let (response, mut stream) = send_request.send_request(head.body(()).unwrap(), false).expect("sent");
    stream.send_data(grpc_frame(false, 0, &[]), true).ok();
    let end = finish_call(response).await;
    assert_eq!(end.http_status, Some(431), "{end:?}");
    let head = grpc_head(&mesh, "/mesh.cache.v1.Cache/Get").body(()).unwrap();
    let (response, mut stream) = send_request.ready().await.expect("open").send_request(head, false).expect("sent");
    let message = get_request_bytes("k");
    stream.send_data(grpc_frame(false, u32::try_from(message.len()).unwrap(), &message), true).expect("sent");
    let end = finish_call(response).await;
    assert_eq!(end.grpc_status, Some(0), "the same connection still serves: {end:?}");
    assert!(!connection.is_finished());

    // Far over it (1 MiB in CONTINUATION frames): the connection is ended.
    let (mut send_request, connection) = h2_connect(&mesh).await;
    let head = grpc_head(&mesh, "/mesh.cache.v1.Cache/Get").header("x-padding", "a".repeat(1024 * 1024));
    let sent = send_request.send_request(head.body(()).unwrap(), true);
    if let Ok((response, _stream)) = sent {
        let end = finish_call(response).await;
        assert!(end.grpc_status.is_none(), "a 1 MiB header list was served: {end:?}");
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await.expect("the connection ends").unwrap();
    let error = ended.expect_err("the gateway ends the connection");
    // The gateway sends GOAWAY and closes while this client is still writing
    // the flood, so the client may see its write fail before it reads the GOAWAY.
    let aborted_mid_flood = error
        .get_io()
        .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset));
    let calm_goaway = error.is_go_away()
        && error.is_remote()
        && matches!(error.reason(), Some(Reason::ENHANCE_YOUR_CALM | Reason::COMPRESSION_ERROR));
    assert!(aborted_mid_flood || calm_goaway, "a header flood ends the connection: {error:?}");

    assert_other_callers_served(&mesh, "header flood").await;
    assert_rss_bounded(&mesh, before_kib, "header flood");
}

#[tokio::test]
async fn malformed_grpc_frames_get_internal_and_oversized_ones_resource_exhausted() {
    let mesh = TestMesh::start().await;
    let before_kib = rss_kib(mesh.pid());
    let message = get_request_bytes("user:1");
    let length = u32::try_from(message.len()).unwrap();

    // The length prefix promises more than the body holds.
    let truncated = call_with_body(&mesh, "/mesh.cache.v1.Cache/Get", &[], grpc_frame(false, 1000, &message)).await;
    assert_eq!(truncated.grpc_status, Some(tonic::Code::Internal as i32), "{truncated:?}");

    // The compressed flag without a grpc-encoding (gRPC's compression spec: INTERNAL).
    let flagged = call_with_body(&mesh, "/mesh.cache.v1.Cache/Get", &[], grpc_frame(true, length, &message)).await;
    assert_eq!(flagged.grpc_status, Some(tonic::Code::Internal as i32), "{flagged:?}");
    assert!(flagged.grpc_message.contains("compress"), "{flagged:?}");

    // A flag that is neither 0 nor 1.
    let mut bad_flag = grpc_frame(false, length, &message).to_vec();
    bad_flag[0] = 7;
    let bad_flag = call_with_body(&mesh, "/mesh.cache.v1.Cache/Get", &[], bad_flag.into()).await;
    assert_eq!(bad_flag.grpc_status, Some(tonic::Code::Internal as i32), "{bad_flag:?}");

    // A prefix claiming 1 GiB: refused from the prefix alone, before any
    // buffering, with the status gRPC prescribes for a message over the limit.
    let oversized = call_with_body(&mesh, "/mesh.cache.v1.Cache/Get", &[], grpc_frame(false, 1 << 30, &message)).await;
    assert_eq!(oversized.grpc_status, Some(tonic::Code::ResourceExhausted as i32), "{oversized:?}");

    // 8 MiB actually sent, over the 4 MiB default message limit.
    let big_value = vec![b'v'; 8 * 1024 * 1024];
    let set = pb::SetRequest { key: "big".into(), value: big_value, ..Default::default() }.encode_to_vec();
    let big = call_with_body(
        &mesh,
        "/mesh.cache.v1.Cache/Set",
        &[],
        grpc_frame(false, u32::try_from(set.len()).unwrap(), &set),
    )
    .await;
    assert_eq!(big.grpc_status, Some(tonic::Code::ResourceExhausted as i32), "{big:?}");

    // Garbage that is not protobuf.
    let garbage = call_with_body(&mesh, "/mesh.cache.v1.Cache/Get", &[], grpc_frame(false, 4, &[0xff; 4])).await;
    assert_eq!(garbage.grpc_status, Some(tonic::Code::Internal as i32), "{garbage:?}");

    assert_other_callers_served(&mesh, "malformed frames").await;
    assert_rss_bounded(&mesh, before_kib, "malformed frames");
}

#[tokio::test]
async fn a_slow_drip_body_ends_at_the_deadline_while_others_are_served() {
    let mesh = TestMesh::start_with_env(&[("MESH_GATEWAY_DEFAULT_DEADLINE", "2")]).await;
    let before_kib = rss_kib(mesh.pid());
    let (mut send_request, _connection) = h2_connect(&mesh).await;
    let head = grpc_head(&mesh, "/mesh.cache.v1.Cache/Get").body(()).unwrap();
    let (response, mut stream) = send_request.send_request(head, false).expect("sent");
    // The prefix promises 1000 bytes; one arrives every 100 ms, so the whole
    // message would take 100 s. Pacing is the point of this test, not a wait.
    stream.send_data(grpc_frame(false, 1000, &[]), false).expect("prefix sent");
    let drip = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..1000 {
            interval.tick().await;
            if stream.send_data(Bytes::from_static(b"x"), false).is_err() {
                return;
            }
        }
    });
    assert_other_callers_served(&mesh, "slow drip").await;
    let end = tokio::time::timeout(Duration::from_secs(20), finish_call(response)).await.expect("the call ends");
    assert_eq!(end.grpc_status, Some(tonic::Code::DeadlineExceeded as i32), "{end:?}");
    drip.abort();
    assert_other_callers_served(&mesh, "after slow drip").await;
    assert_rss_bounded(&mesh, before_kib, "slow drip");
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn open_files_soft_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits is readable");
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(u64::MAX)
}

#[tokio::test]
async fn thousands_of_idle_connections_leave_others_served() {
    const IDLE_CONNECTIONS: usize = 2000;
    // Each connection costs one descriptor here and one in the mesh, which inherits this limit.
    let soft_limit = open_files_soft_limit();
    if soft_limit < 2 * IDLE_CONNECTIONS as u64 + 512 {
        eprintln!(
            "skipped: {IDLE_CONNECTIONS} idle connections need about {} open files, the soft limit is {soft_limit}; \
             raise it with `ulimit -n`",
            2 * IDLE_CONNECTIONS + 512
        );
        return;
    }
    let mesh = TestMesh::start().await;
    assert_other_callers_served(&mesh, "warm-up").await;
    let before_kib = rss_kib(mesh.pid());
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        // A completed HTTP/2 handshake, then nothing: the connection holds its state in the gateway.
        idle.push(h2_connect(&mesh).await);
    }
    assert_other_callers_served(&mesh, "2000 idle connections").await;
    assert_rss_bounded(&mesh, before_kib, "2000 idle connections");
    let still_open = idle.iter().filter(|(_, connection)| !connection.is_finished()).count();
    println!("{still_open} of {IDLE_CONNECTIONS} idle connections still open");
    drop(idle);
    assert_other_callers_served(&mesh, "after idle connections").await;
}

#[tokio::test]
async fn cancelling_500_calls_in_flight_leaves_the_mesh_serving() {
    const CANCELLED_CALLS: usize = 500;
    let mesh = TestMesh::start().await;
    let mut cache = mesh.cache().await;
    assert_other_callers_served(&mesh, "warm-up").await;
    let before_kib = rss_kib(mesh.pid());

    // One caller takes the lease on a missing key; the 500 then wait for it
    // to be filled (up to 30 s), so they are in flight when cancelled.
    let lease = |max_wait_seconds| pb::GetOrLeaseRequest {
        key: "abuse:leased".into(),
        lease_ttl: None,
        max_wait: Some(prost_types::Duration { seconds: max_wait_seconds, nanos: 0 }),
    };
    let holder = cache.get_or_lease(lease(0)).await.expect("the first caller gets the lease").into_inner();
    assert_eq!(holder.outcome, pb::LeaseOutcome::Leased as i32);

    let misses_before = cache.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner().misses;
    let channel = mesh.channel().await;
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..CANCELLED_CALLS {
        let mut client = pb::cache_client::CacheClient::new(channel.clone());
        waiters.spawn(async move { client.get_or_lease(lease(30)).await });
    }
    // Each waiting call counted one miss on arrival: once all have, all are in flight.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let stats = cache.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
            if stats.misses >= misses_before + CANCELLED_CALLS as u64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the 500 calls reach the cache");
    assert_other_callers_served(&mesh, "500 waiting calls").await;
    // Dropping the calls resets their streams (RST_STREAM CANCEL).
    waiters.abort_all();
    while let Some(joined) = waiters.join_next().await {
        assert!(joined.is_err_and(|error| error.is_cancelled()), "a waiting call finished before its cancellation");
    }

    // The lease still works: fill it, and a new reader gets the value.
    let fill = pb::SetRequest {
        key: "abuse:leased".into(),
        value: b"filled".to_vec(),
        lease_id: holder.lease_id.clone(),
        ..Default::default()
    };
    cache.set(fill).await.expect("the lease holder fills the key");
    let read = cache.get_or_lease(lease(0)).await.expect("read after fill").into_inner();
    assert_eq!(read.outcome, pb::LeaseOutcome::Hit as i32);
    assert_eq!(read.value, b"filled");

    assert_other_callers_served(&mesh, "after 500 cancellations").await;
    assert_rss_bounded(&mesh, before_kib, "500 cancellations");
}
