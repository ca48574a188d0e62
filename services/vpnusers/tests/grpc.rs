//! The VpnUsers service as callers see it: `mesh_vpnusers::run` on
//! `127.0.0.1:0` behind a real `MeshServer`, the generated client, and (for
//! cache-aside) the real Cache service from `mesh_cache::run`. Bad input gets
//! precise codes with `ErrorInfo`; the cache is used, invalidated by writes,
//! and not needed when it is down.

// Product names (SQLite, PostgreSQL) are prose in these docs, not code.
#![allow(clippy::doc_markdown)]

mod support;

use std::net::SocketAddr;

use mesh_kit::{CancellationToken, ConfigSource, Runtime, ServeError, ServerSettings};
use mesh_proto::cache::v1 as cache_pb;
use mesh_proto::cache::v1::cache_client::CacheClient;
use mesh_proto::vpnusers::v1 as pb;
use mesh_proto::vpnusers::v1::vpn_users_client::VpnUsersClient;
use prost::Message;
use support::TestDb;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

/// A server on an ephemeral port and the way to stop it.
struct RunningServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    async fn vpnusers(config_source: ConfigSource) -> Self {
        Self::start(config_source, |runtime| tokio::spawn(mesh_vpnusers::run(runtime))).await
    }

    async fn cache() -> Self {
        Self::start(ConfigSource::default(), |runtime| tokio::spawn(mesh_cache::run(runtime))).await
    }

    async fn start(
        config_source: ConfigSource,
        spawn: impl FnOnce(Runtime) -> JoinHandle<Result<(), ServeError>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let runtime =
            Runtime { listener, server_settings: ServerSettings::default(), config_source, shutdown: shutdown.clone() };
        Self { addr, shutdown, task: spawn(runtime) }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits until it has closed its port.
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("server task").expect("server stopped cleanly");
    }
}

/// A client; the listener is bound, so calls queue until the server serves.
async fn vpnusers_client(server: &RunningServer) -> VpnUsersClient<Channel> {
    VpnUsersClient::connect(server.endpoint()).await.expect("connect to vpnusers")
}

fn new_user(username: &str) -> pb::NewUser {
    pb::NewUser {
        username: username.into(),
        email: format!("{username}@example.com"),
        protocol: pb::VpnProtocol::Openvpn.into(),
        note: format!("customer {username}"),
        ..pb::NewUser::default()
    }
}

/// The `ErrorInfo.reason` of a per-item status.
fn item_reason(result: Option<&mesh_proto::common::v1::ItemResult>) -> String {
    let status = result.and_then(|result| result.status.as_ref()).expect("item status");
    if status.code == 0 {
        return "OK".to_owned();
    }
    status
        .details
        .iter()
        .find(|detail| detail.type_url.ends_with("google.rpc.ErrorInfo"))
        .map(|detail| tonic_types::pb::ErrorInfo::decode(detail.value.as_slice()).expect("error info").reason)
        .expect("a failed item carries ErrorInfo")
}

/// Asserts the call failed with `code` and `reason`, and returns the status.
fn expect_error<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, reason: &str) -> tonic::Status {
    let status = result.expect_err("the call fails");
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "mesh.vpnusers.v1");
    status
}

async fn batches_and_bad_input_over_grpc(db: &TestDb) {
    let server = RunningServer::vpnusers(db.config_source()).await;
    let mut client = vpnusers_client(&server).await;

    let batch = vec![
        new_user("alice"),
        new_user("bob"),
        new_user("alice"),
        pb::NewUser { email: "nope".into(), ..new_user("carol") },
    ];
    let response = client
        .create_users(pb::CreateUsersRequest {
            users: batch.clone(),
            mode: pb::BatchMode::PerItem.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.created_count, 2);
    let reasons: Vec<String> = response.results.iter().map(|r| item_reason(r.result.as_ref())).collect();
    assert_eq!(reasons, ["OK", "OK", "DUPLICATE_USERNAME", "INVALID_EMAIL"]);
    assert_eq!(response.results[2].result.as_ref().unwrap().status.as_ref().unwrap().code, Code::AlreadyExists as i32);
    let alice = response.results[0].user.clone().unwrap();

    // All or nothing: the taken username refuses the batch, with the caller's correlation id.
    let mut request = Request::new(pb::CreateUsersRequest {
        users: vec![new_user("dave"), new_user("alice")],
        mode: pb::BatchMode::AllOrNothing.into(),
        ..Default::default()
    });
    request.metadata_mut().insert("x-correlation-id", "vpn-test-1".parse().unwrap());
    let status = expect_error(client.create_users(request).await, Code::AlreadyExists, "USERNAME_TAKEN");
    assert_eq!(status.get_error_details().error_info().unwrap().metadata["correlation_id"], "vpn-test-1");
    assert!(status.message().contains("item 1"), "{}", status.message());
    let dave = pb::ListUsersRequest {
        filter: Some(pb::UserFilter { username: "dave".into(), ..pb::UserFilter::default() }),
        ..pb::ListUsersRequest::default()
    };
    assert!(client.list_users(dave).await.unwrap().into_inner().users.is_empty(), "nothing half-written");

    // A batch over the limit names the limit and the field.
    let too_many: Vec<pb::NewUser> = (0..101).map(|i| new_user(&format!("u{i}"))).collect();
    let status = expect_error(
        client.create_users(pb::CreateUsersRequest { users: too_many, ..Default::default() }).await,
        Code::InvalidArgument,
        "BATCH_TOO_LARGE",
    );
    assert_eq!(status.message(), "users holds 101 items, max 100");
    assert_eq!(status.get_error_details().bad_request().unwrap().field_violations[0].field, "users");

    // Unknown and malformed ids.
    expect_error(
        client.get_user(pb::GetUserRequest { id: uuid::Uuid::now_v7().to_string() }).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let status = expect_error(
        client.get_user(pb::GetUserRequest { id: "42".into() }).await,
        Code::InvalidArgument,
        "INVALID_ID",
    );
    assert_eq!(status.get_error_details().bad_request().unwrap().field_violations[0].field, "id");
    let response = client
        .get_users(pb::GetUsersRequest {
            ids: vec![alice.id.clone(), "42".into()],
            mode: pb::BatchMode::PerItem.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let reasons: Vec<String> = response.entries.iter().map(|e| item_reason(e.result.as_ref())).collect();
    assert_eq!(reasons, ["OK", "INVALID_ID"]);

    // Updates through a field mask.
    let update = pb::UserUpdate {
        id: alice.id.clone(),
        user: Some(pb::User {
            traffic_used_bytes: 5_000,
            status: pb::UserStatus::Suspended.into(),
            ..pb::User::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["traffic_used_bytes".into(), "status".into()] }),
    };
    let response = client
        .update_users(pb::UpdateUsersRequest { updates: vec![update], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let updated = response.results[0].user.clone().unwrap();
    assert_eq!(
        (updated.traffic_used_bytes, updated.status(), updated.note.as_str()),
        (5_000, pb::UserStatus::Suspended, "customer alice")
    );

    server.stop().await;
}

async fn lists_search_status_and_export_over_grpc(db: &TestDb) {
    let server = RunningServer::vpnusers(db.config_source()).await;
    let mut client = vpnusers_client(&server).await;
    let users = vec![new_user("alice"), new_user("bob")];
    let response =
        client.create_users(pb::CreateUsersRequest { users, ..Default::default() }).await.unwrap().into_inner();
    let alice = response.results[0].user.clone().unwrap();
    let suspend = pb::set_status_request::Selector::Ids(pb::UserIds { ids: vec![alice.id.clone()] });
    client
        .set_status(pb::SetStatusRequest { status: pb::UserStatus::Suspended.into(), selector: Some(suspend) })
        .await
        .unwrap();

    // Page sizes: 0 is the default, 10^9 is refused naming the maximum.
    let page = client.list_users(pb::ListUsersRequest::default()).await.unwrap().into_inner();
    assert_eq!((page.users.len(), page.page_number, page.total_size), (2, 1, -1));
    let status = expect_error(
        client.list_users(pb::ListUsersRequest { page_size: 1_000_000_000, ..pb::ListUsersRequest::default() }).await,
        Code::InvalidArgument,
        "INVALID_PAGE_SIZE",
    );
    assert_eq!(status.message(), "page_size must be between 0 and 1000 (got 1000000000)");
    expect_error(
        client.list_users(pb::ListUsersRequest { page_size: -1, ..pb::ListUsersRequest::default() }).await,
        Code::InvalidArgument,
        "INVALID_PAGE_SIZE",
    );

    // Tokens: a real one works, a forged one is INVALID_ARGUMENT.
    let first = client
        .list_users(pb::ListUsersRequest { page_size: 1, include_total_size: true, ..pb::ListUsersRequest::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.total_size, 2);
    let second = client
        .list_users(pb::ListUsersRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
            ..pb::ListUsersRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((second.users.len(), second.page_number, second.next_page_token.as_str()), (1, 2, ""));
    let forged = format!("{}x", first.next_page_token);
    expect_error(
        client.list_users(pb::ListUsersRequest { page_token: forged, ..pb::ListUsersRequest::default() }).await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );

    // Search input is never syntax.
    for query in ["alice", "\" OR 1=1 --", "customer*", "NEAR(a b)", "a & !b | c:*"] {
        let result = client
            .search_users(pb::SearchUsersRequest { query: query.into(), ..pb::SearchUsersRequest::default() })
            .await;
        assert!(result.is_ok(), "{query:?}: {result:?}");
    }
    let hits = client
        .search_users(pb::SearchUsersRequest { query: "CUSTOMER ali".into(), ..pb::SearchUsersRequest::default() })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].user.as_ref().unwrap().id, alice.id);

    // Bulk status: a selector is required, an empty filter is refused.
    expect_error(
        client.set_status(pb::SetStatusRequest { status: pb::UserStatus::Active.into(), selector: None }).await,
        Code::InvalidArgument,
        "MISSING_SELECTOR",
    );
    let everyone = pb::set_status_request::Selector::Filter(pb::UserFilter::default());
    expect_error(
        client
            .set_status(pb::SetStatusRequest { status: pb::UserStatus::Active.into(), selector: Some(everyone) })
            .await,
        Code::InvalidArgument,
        "EMPTY_FILTER",
    );
    let suspended = pb::set_status_request::Selector::Filter(pb::UserFilter {
        statuses: vec![pb::UserStatus::Suspended.into()],
        ..pb::UserFilter::default()
    });
    let response = client
        .set_status(pb::SetStatusRequest { status: pb::UserStatus::Disabled.into(), selector: Some(suspended) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.affected_count, 1);

    // Stats and export.
    let totals = client.get_stats(pb::GetStatsRequest::default()).await.unwrap().into_inner();
    assert_eq!(totals.total_users, 2);
    assert_eq!(totals.signups.len(), 30);
    assert_eq!(totals.cache.unwrap(), pb::CacheUsage::default(), "no cache configured");
    let mut stream = client
        .export_users(pb::ExportUsersRequest { chunk_size: 1, ..pb::ExportUsersRequest::default() })
        .await
        .unwrap()
        .into_inner();
    let mut exported = 0;
    while let Some(chunk) = stream.next().await {
        exported += chunk.unwrap().users.len();
    }
    assert_eq!(exported, 2);

    server.stop().await;
}

async fn retries_with_a_request_id_write_once_over_grpc(db: &TestDb) {
    let server = RunningServer::vpnusers(db.config_source()).await;
    let mut client = vpnusers_client(&server).await;
    let create = pb::CreateUsersRequest {
        users: vec![new_user("ivy"), new_user("jack")],
        mode: pb::BatchMode::PerItem.into(),
        request_id: "create-1".into(),
    };
    let first = client.create_users(create.clone()).await.unwrap().into_inner();
    assert_eq!(first.created_count, 2);
    // The retry is answered with the first response (same ids, same instants),
    // not with USERNAME_TAKEN, and writes nothing.
    let retried = client.create_users(create.clone()).await.unwrap().into_inner();
    assert_eq!(retried, first);
    let everyone = pb::ListUsersRequest { include_total_size: true, ..pb::ListUsersRequest::default() };
    assert_eq!(client.list_users(everyone.clone()).await.unwrap().into_inner().total_size, 2);

    // The key with another request, or on another RPC, is refused naming the field.
    let other_request = pb::CreateUsersRequest { users: vec![new_user("kate")], ..create.clone() };
    let status = expect_error(client.create_users(other_request).await, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    assert!(status.message().contains("request_id"), "{}", status.message());
    let ivy_id = first.results[0].user.as_ref().unwrap().id.clone();
    let delete_with_create_key =
        pb::DeleteUsersRequest { ids: vec![ivy_id.clone()], mode: 0, request_id: "create-1".into() };
    expect_error(client.delete_users(delete_with_create_key).await, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    let status = expect_error(
        client.create_users(pb::CreateUsersRequest { request_id: "has space".into(), ..create.clone() }).await,
        Code::InvalidArgument,
        "INVALID_REQUEST_ID",
    );
    assert_eq!(status.get_error_details().bad_request().unwrap().field_violations[0].field, "request_id");

    // A delete retried after it succeeded reports the deletion again, not NOT_FOUND.
    let delete = pb::DeleteUsersRequest { ids: vec![ivy_id.clone()], mode: 0, request_id: "delete-1".into() };
    let deleted = client.delete_users(delete.clone()).await.unwrap().into_inner();
    assert_eq!(deleted.deleted_count, 1);
    assert_eq!(client.delete_users(delete).await.unwrap().into_inner(), deleted);

    // An update retried returns the first result; `updated_at` proves it was not applied twice.
    let jack = first.results[1].user.clone().unwrap();
    let update = pb::UpdateUsersRequest {
        updates: vec![pb::UserUpdate {
            id: jack.id.clone(),
            user: Some(pb::User { note: "annual plan".into(), ..pb::User::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["note".into()] }),
        }],
        mode: 0,
        request_id: "update-1".into(),
    };
    let updated = client.update_users(update.clone()).await.unwrap().into_inner();
    assert_eq!(updated.results[0].user.as_ref().unwrap().note, "annual plan");
    assert_eq!(client.update_users(update).await.unwrap().into_inner(), updated);
    let stored = client.get_user(pb::GetUserRequest { id: jack.id }).await.unwrap().into_inner().user.unwrap();
    assert_eq!(stored.updated_at, updated.results[0].user.as_ref().unwrap().updated_at);

    // A call refused as a whole stores nothing: the same key may carry the fixed request.
    let refused = pb::CreateUsersRequest {
        users: vec![new_user("liam"), new_user("jack")],
        mode: pb::BatchMode::AllOrNothing.into(),
        request_id: "create-2".into(),
    };
    expect_error(client.create_users(refused).await, Code::AlreadyExists, "USERNAME_TAKEN");
    let fixed = pb::CreateUsersRequest {
        users: vec![new_user("liam")],
        mode: pb::BatchMode::AllOrNothing.into(),
        request_id: "create-2".into(),
    };
    assert_eq!(client.create_users(fixed).await.unwrap().into_inner().created_count, 1);
    assert_eq!(client.list_users(everyone).await.unwrap().into_inner().total_size, 2, "jack and liam");

    server.stop().await;
}

on_both_backends!(
    batches_and_bad_input_over_grpc,
    lists_search_status_and_export_over_grpc,
    retries_with_a_request_id_write_once_over_grpc
);

// === cache-aside ===

async fn cache_stats(client: &mut VpnUsersClient<Channel>) -> pb::CacheUsage {
    client.get_stats(pb::GetStatsRequest::default()).await.unwrap().into_inner().cache.unwrap()
}

async fn cached(cache: &mut CacheClient<Channel>, id: &str) -> bool {
    let key = format!("vpnusers:user:{id}");
    cache.get(cache_pb::GetRequest { key }).await.unwrap().into_inner().found
}

#[tokio::test]
async fn reads_go_through_the_cache_and_writes_invalidate_it() {
    let db = TestDb::sqlite();
    let cache_server = RunningServer::cache().await;
    let source = db.config_source().with_var("MESH_VPNUSERS_CACHE_ENDPOINT", cache_server.endpoint());
    let server = RunningServer::vpnusers(source).await;
    let mut client = vpnusers_client(&server).await;
    let mut cache = CacheClient::connect(cache_server.endpoint()).await.unwrap();

    let created = client
        .create_users(pb::CreateUsersRequest {
            users: vec![new_user("erin"), new_user("frank")],
            mode: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = created.results.iter().map(|r| r.user.as_ref().unwrap().id.clone()).collect();
    assert!(!cached(&mut cache, &ids[0]).await, "creating caches nothing");

    let first = client.get_user(pb::GetUserRequest { id: ids[0].clone() }).await.unwrap().into_inner().user;
    assert!(cached(&mut cache, &ids[0]).await, "a miss fills the cache");
    let second = client.get_user(pb::GetUserRequest { id: ids[0].clone() }).await.unwrap().into_inner().user;
    assert_eq!(first, second);
    let usage = cache_stats(&mut client).await;
    assert_eq!((usage.enabled, usage.hits, usage.misses, usage.failures), (true, 1, 1, 0));

    // A batch read is served partly from the cache, partly from the database.
    let response = client.get_users(pb::GetUsersRequest { ids: ids.clone(), mode: 0 }).await.unwrap().into_inner();
    assert_eq!(response.entries.len(), 2);
    let usage = cache_stats(&mut client).await;
    assert_eq!((usage.hits, usage.misses), (2, 2));
    assert!(cached(&mut cache, &ids[1]).await);

    // An update invalidates `user:<id>`; the next read sees the new value.
    let update = pb::UserUpdate {
        id: ids[0].clone(),
        user: Some(pb::User { note: "moved to the annual plan".into(), ..pb::User::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["note".into()] }),
    };
    client.update_users(pb::UpdateUsersRequest { updates: vec![update], ..Default::default() }).await.unwrap();
    assert!(!cached(&mut cache, &ids[0]).await, "the update dropped the cached copy");
    assert!(cached(&mut cache, &ids[1]).await, "other users stay cached");
    let reread = client.get_user(pb::GetUserRequest { id: ids[0].clone() }).await.unwrap().into_inner().user.unwrap();
    assert_eq!(reread.note, "moved to the annual plan");

    // A bulk change by filter cannot name its users: it drops tag `users`.
    let by_protocol = pb::set_status_request::Selector::Filter(pb::UserFilter {
        protocols: vec![pb::VpnProtocol::Openvpn.into()],
        ..pb::UserFilter::default()
    });
    client
        .set_status(pb::SetStatusRequest { status: pb::UserStatus::Expired.into(), selector: Some(by_protocol) })
        .await
        .unwrap();
    assert!(!cached(&mut cache, &ids[0]).await && !cached(&mut cache, &ids[1]).await);
    let expired = client.get_user(pb::GetUserRequest { id: ids[1].clone() }).await.unwrap().into_inner().user.unwrap();
    assert_eq!(expired.status(), pb::UserStatus::Expired);

    // A delete drops the cached copy too.
    client.get_user(pb::GetUserRequest { id: ids[1].clone() }).await.unwrap();
    client.delete_users(pb::DeleteUsersRequest { ids: vec![ids[1].clone()], ..Default::default() }).await.unwrap();
    assert!(!cached(&mut cache, &ids[1]).await);
    expect_error(client.get_user(pb::GetUserRequest { id: ids[1].clone() }).await, Code::NotFound, "USER_NOT_FOUND");

    server.stop().await;
    cache_server.stop().await;
}

#[tokio::test]
async fn a_cache_that_is_down_costs_nothing_but_a_counter() {
    let db = TestDb::sqlite();
    // A port that was bound and released: connections are refused.
    let closed_port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let source = db.config_source().with_var("MESH_VPNUSERS_CACHE_ENDPOINT", format!("http://{closed_port}"));
    let server = RunningServer::vpnusers(source).await;
    let mut client = vpnusers_client(&server).await;

    let created = client
        .create_users(pb::CreateUsersRequest { users: vec![new_user("gina")], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let id = created.results[0].user.as_ref().unwrap().id.clone();
    for _ in 0..3 {
        let user = client.get_user(pb::GetUserRequest { id: id.clone() }).await.unwrap().into_inner().user.unwrap();
        assert_eq!(user.username, "gina");
    }
    let usage = cache_stats(&mut client).await;
    assert!(usage.enabled);
    assert_eq!(usage.hits, 0);
    assert!(usage.failures >= 3, "every read served without the cache is counted: {usage:?}");
    server.stop().await;
}

#[tokio::test]
async fn reads_survive_the_cache_going_away() {
    let db = TestDb::sqlite();
    let cache_server = RunningServer::cache().await;
    let source = db
        .config_source()
        .with_var("MESH_VPNUSERS_CACHE_ENDPOINT", cache_server.endpoint())
        .with_var("MESH_VPNUSERS_CACHE_RETRY_AFTER", "0");
    let server = RunningServer::vpnusers(source).await;
    let mut client = vpnusers_client(&server).await;
    let created = client
        .create_users(pb::CreateUsersRequest { users: vec![new_user("hank")], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let id = created.results[0].user.as_ref().unwrap().id.clone();
    client.get_user(pb::GetUserRequest { id: id.clone() }).await.unwrap();
    client.get_user(pb::GetUserRequest { id: id.clone() }).await.unwrap();
    assert_eq!(cache_stats(&mut client).await.hits, 1);

    cache_server.stop().await;
    let user = client.get_user(pb::GetUserRequest { id: id.clone() }).await.unwrap().into_inner().user.unwrap();
    assert_eq!(user.username, "hank");
    let update = pb::UserUpdate {
        id: id.clone(),
        user: Some(pb::User { note: "written while the cache was down".into(), ..pb::User::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["note".into()] }),
    };
    client.update_users(pb::UpdateUsersRequest { updates: vec![update], ..Default::default() }).await.unwrap();
    let user = client.get_user(pb::GetUserRequest { id }).await.unwrap().into_inner().user.unwrap();
    assert_eq!(user.note, "written while the cache was down");
    assert!(cache_stats(&mut client).await.failures >= 1);
    server.stop().await;
}
