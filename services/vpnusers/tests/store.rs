//! The user directory against a real database, the same cases on SQLite and
//! on PostgreSQL: batches and their modes, bad input, lists with filters,
//! sorting and signed keyset pages, full-text search, stats, bulk status and
//! export.

// Product names (SQLite, PostgreSQL) are prose in these docs, not code.
#![allow(clippy::doc_markdown)]

mod support;

use std::collections::HashSet;

use mesh_vpnusers::filter::{ByteRange, InstantRange, SortDirection, SortField};
use mesh_vpnusers::idempotency::IdempotencyClaim;
use mesh_vpnusers::store::{ListQuery, StatusSelector};
use mesh_vpnusers::{
    BatchMode, IdempotencyKey, NewUser, UserDirectory, UserFilter, UserPatch, UserSort, UserStatus, UserStore,
    VpnProtocol, Written,
};
use support::TestDb;
use uuid::Uuid;

fn new_user(i: usize) -> NewUser {
    let mut user = NewUser::new(format!("user{i:05}"), format!("user{i:05}@example.com"));
    user.protocol = VpnProtocol::ALL[i % VpnProtocol::ALL.len()];
    user.status = UserStatus::ALL[i % UserStatus::ALL.len()];
    user.traffic_used_bytes = (i as u64) * 1000;
    user.traffic_limit_bytes = if i.is_multiple_of(2) { 50_000 } else { 0 };
    user
}

async fn seed(directory: &UserDirectory, count: usize) -> Vec<mesh_vpnusers::User> {
    let mut created = Vec::new();
    let users: Vec<NewUser> = (0..count).map(new_user).collect();
    for chunk in users.chunks(100) {
        let outcomes = directory.create_users(chunk.to_vec(), BatchMode::AllOrNothing).await.expect("seed batch");
        created.extend(outcomes.into_iter().map(|outcome| outcome.expect("seeded user")));
    }
    created
}

fn list(page_size: u32) -> ListQuery {
    ListQuery { page_size, ..ListQuery::default() }
}

async fn create_then_read_back(db: &TestDb) {
    let directory = db.directory().await;
    let mut alice = NewUser::new("alice", "alice@example.com");
    alice.note = "VIP since 2021".into();
    alice.expires_at_micros = Some(1_900_000_000_000_000);
    alice.traffic_limit_bytes = u64::MAX >> 1;
    let outcomes = directory.create_users(vec![alice.clone()], BatchMode::AllOrNothing).await.unwrap();
    let created = outcomes.into_iter().next().unwrap().unwrap();
    assert_eq!(created.id.get_version_num(), 7);
    assert_eq!(created.created_at_micros, created.updated_at_micros);
    let read = directory.get_user(created.id).await.unwrap();
    assert_eq!(read, created, "{}", db.backend_name);
    assert_eq!(read.expires_at_micros, Some(1_900_000_000_000_000));
    assert_eq!(read.traffic_limit_bytes, u64::MAX >> 1);
    let missing = directory.get_user(Uuid::now_v7()).await.unwrap_err();
    assert_eq!(missing.reason(), "USER_NOT_FOUND");
}

async fn duplicate_usernames_per_item_and_all_or_nothing(db: &TestDb) {
    let directory = db.directory().await;
    directory.create_users(vec![NewUser::new("taken", "t@example.com")], BatchMode::AllOrNothing).await.unwrap();
    let batch = vec![
        NewUser::new("fresh", "f@example.com"),
        NewUser::new("taken", "t2@example.com"),
        NewUser::new("twice", "a@example.com"),
        NewUser::new("twice", "b@example.com"),
        NewUser::new("bad", "not-an-email"),
    ];
    let outcomes = directory.create_users(batch.clone(), BatchMode::PerItem).await.unwrap();
    let reasons: Vec<&str> =
        outcomes.iter().map(|o| o.as_ref().map_or_else(mesh_vpnusers::VpnUsersError::reason, |_| "OK")).collect();
    assert_eq!(reasons, ["OK", "USERNAME_TAKEN", "OK", "DUPLICATE_USERNAME", "INVALID_EMAIL"]);

    // The same batch, all or nothing, against a fresh name set: refused whole.
    let batch: Vec<NewUser> = vec![NewUser::new("n1", "n1@example.com"), NewUser::new("taken", "x@example.com")];
    let error = directory.create_users(batch, BatchMode::AllOrNothing).await.unwrap_err();
    assert_eq!(error.reason(), "USERNAME_TAKEN");
    assert!(error.to_string().starts_with("item 1 refused, nothing was written"), "{error}");
    let page = directory.list_users(&ListQuery { filter: username("n1"), ..list(10) }).await.unwrap();
    assert!(page.users.is_empty(), "nothing half-written on {}", db.backend_name);
}

/// A batch larger than one SQLite statement can bind (12 values a user, at
/// most 32,766 per statement), with a name taken before the batch and one
/// repeated inside it, both past the first statement's rows: per item each
/// gets its own status, and all or nothing writes none of the batch.
async fn large_batches_keep_per_item_statuses(db: &TestDb) {
    let config = mesh_vpnusers::VpnUsersConfig { max_batch_size: 3_000, ..db.config() };
    let directory = db.directory_with(config).await;
    directory
        .create_users(vec![NewUser::new("user02900", "taken@example.com")], BatchMode::AllOrNothing)
        .await
        .unwrap();
    let mut batch: Vec<NewUser> = (0..3_000).map(new_user).collect();
    batch[2_950] = NewUser::new("user02800", "again@example.com");

    let error = directory.create_users(batch.clone(), BatchMode::AllOrNothing).await.unwrap_err();
    assert_eq!(error.reason(), "DUPLICATE_USERNAME", "{}", db.backend_name);
    let without_repeat: Vec<NewUser> = batch.iter().take(2_950).cloned().collect();
    let error = directory.create_users(without_repeat, BatchMode::AllOrNothing).await.unwrap_err();
    assert_eq!(error.reason(), "USERNAME_TAKEN", "{}", db.backend_name);
    assert!(error.to_string().starts_with("item 2900 refused, nothing was written"), "{error}");
    assert_eq!(directory.store().count(&UserFilter::default()).await.unwrap(), 1, "nothing of the batch was kept");

    let outcomes = directory.create_users(batch, BatchMode::PerItem).await.unwrap();
    assert_eq!(outcomes.len(), 3_000);
    for (index, outcome) in outcomes.iter().enumerate() {
        let expected = match index {
            2_900 => "USERNAME_TAKEN",
            2_950 => "DUPLICATE_USERNAME",
            _ => "OK",
        };
        let reason = outcome.as_ref().map_or_else(mesh_vpnusers::VpnUsersError::reason, |_| "OK");
        assert_eq!(reason, expected, "item {index} on {}", db.backend_name);
    }
    assert_eq!(directory.store().count(&UserFilter::default()).await.unwrap(), 2_999);
    let created = outcomes[2_999].as_ref().unwrap();
    assert_eq!(directory.get_user(created.id).await.unwrap(), *created, "stored as returned");
}

/// Writers at once all commit: on SQLite they queue for the one writer
/// connection instead of failing or sleeping on the write lock.
async fn concurrent_batches_all_commit(db: &TestDb) {
    let directory = db.directory().await;
    let batches = (0..8).map(|batch| {
        let directory = directory.clone();
        let users: Vec<NewUser> = (batch * 50..(batch + 1) * 50).map(new_user).collect();
        tokio::spawn(async move { directory.create_users(users, BatchMode::AllOrNothing).await })
    });
    let mut ids = Vec::new();
    for handle in batches.collect::<Vec<_>>() {
        let outcomes = handle.await.unwrap().expect("every batch commits");
        ids.extend(outcomes.into_iter().map(|outcome| outcome.unwrap().id));
    }
    assert_eq!(directory.store().count(&UserFilter::default()).await.unwrap(), 400);
    let outcome = directory.set_status(UserStatus::Disabled, &StatusSelector::Ids(ids.clone())).await.unwrap();
    assert_eq!(outcome.affected_count, 400);
    assert!(outcome.not_found_ids.is_empty());
    let found = directory.get_users(&ids[..100], BatchMode::AllOrNothing).await.unwrap();
    assert!(found.iter().all(|user| user.as_ref().unwrap().status == UserStatus::Disabled));
}

fn username(name: &str) -> UserFilter {
    UserFilter { username: Some(name.into()), ..UserFilter::default() }
}

async fn batch_limits_are_enforced(db: &TestDb) {
    let directory = db.directory().await;
    let batch: Vec<NewUser> = (0..101).map(new_user).collect();
    let error = directory.create_users(batch, BatchMode::PerItem).await.unwrap_err();
    assert_eq!(error.reason(), "BATCH_TOO_LARGE");
    assert_eq!(error.to_string(), "users holds 101 items, max 100");
    let ids: Vec<Uuid> = (0..101).map(|_| Uuid::now_v7()).collect();
    assert_eq!(directory.get_users(&ids, BatchMode::PerItem).await.unwrap_err().reason(), "BATCH_TOO_LARGE");
    assert_eq!(directory.delete_users(ids, BatchMode::PerItem).await.unwrap_err().reason(), "BATCH_TOO_LARGE");
}

async fn updates_change_fields_and_refuse_conflicts(db: &TestDb) {
    let directory = db.directory().await;
    let users = seed(&directory, 3).await;
    let (a, b, c) = (users[0].clone(), users[1].clone(), users[2].clone());
    let updates = vec![
        (a.id, UserPatch { note: Some("renewed".into()), expires_at_micros: Some(None), ..UserPatch::default() }),
        (b.id, UserPatch { username: Some(c.username.clone()), ..UserPatch::default() }),
        (Uuid::now_v7(), UserPatch { note: Some("ghost".into()), ..UserPatch::default() }),
        (c.id, UserPatch::default()),
    ];
    let outcomes = directory.update_users(updates, BatchMode::PerItem).await.unwrap();
    let reasons: Vec<&str> =
        outcomes.iter().map(|o| o.as_ref().map_or_else(mesh_vpnusers::VpnUsersError::reason, |_| "OK")).collect();
    assert_eq!(reasons, ["OK", "USERNAME_TAKEN", "USER_NOT_FOUND", "EMPTY_UPDATE"]);
    let renewed = directory.get_user(a.id).await.unwrap();
    assert_eq!(renewed.note, "renewed");
    assert!(renewed.updated_at_micros >= a.updated_at_micros);
    assert_eq!(renewed.created_at_micros, a.created_at_micros);

    // A rename shows up in search, because search_text follows the fields.
    let rename = vec![(a.id, UserPatch { username: Some("zelda".into()), ..UserPatch::default() })];
    directory.update_users(rename, BatchMode::AllOrNothing).await.unwrap();
    let hits = directory.search_users("zelda", 10, None).await.unwrap().hits;
    assert_eq!(hits.iter().map(|hit| hit.user.id).collect::<Vec<_>>(), [a.id]);

    let all_or_nothing = vec![
        (b.id, UserPatch { note: Some("kept?".into()), ..UserPatch::default() }),
        (b.id, UserPatch { note: Some("again".into()), ..UserPatch::default() }),
    ];
    let error = directory.update_users(all_or_nothing, BatchMode::AllOrNothing).await.unwrap_err();
    assert_eq!(error.reason(), "DUPLICATE_ID");
    assert_eq!(directory.get_user(b.id).await.unwrap().note, "");
}

async fn deletes_report_unknown_ids(db: &TestDb) {
    let directory = db.directory().await;
    let users = seed(&directory, 2).await;
    let ghost = Uuid::now_v7();
    let error = directory.delete_users(vec![users[0].id, ghost], BatchMode::AllOrNothing).await.unwrap_err();
    assert_eq!(error.reason(), "USER_NOT_FOUND");
    assert!(directory.get_user(users[0].id).await.is_ok(), "all or nothing kept the user");
    let outcomes = directory.delete_users(vec![users[0].id, ghost], BatchMode::PerItem).await.unwrap();
    assert!(outcomes[0].is_ok());
    assert_eq!(outcomes[1].as_ref().unwrap_err().reason(), "USER_NOT_FOUND");
    assert_eq!(directory.get_user(users[0].id).await.unwrap_err().reason(), "USER_NOT_FOUND");
    let outcomes = directory.get_users(&[users[0].id, users[1].id], BatchMode::PerItem).await.unwrap();
    assert!(outcomes[0].is_err() && outcomes[1].is_ok());
}

async fn keyset_pages_cover_every_user_once_in_order(db: &TestDb) {
    let directory = db.directory().await;
    seed(&directory, 250).await;
    for (field, direction) in [
        (SortField::Username, SortDirection::Ascending),
        (SortField::TrafficUsed, SortDirection::Descending),
        (SortField::CreatedAt, SortDirection::Ascending),
        (SortField::ExpiresAt, SortDirection::Descending),
    ] {
        let sort = UserSort { field, direction };
        let mut query = ListQuery { sort, include_total_size: true, ..list(40) };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = directory.list_users(&query).await.unwrap();
            pages += 1;
            assert_eq!(page.page_number, pages);
            assert_eq!(page.total_size, Some(250));
            seen.extend(page.users);
            match page.next_page_token {
                Some(token) => query.page_token = Some(token),
                None => break,
            }
        }
        assert_eq!(pages, 7, "{field:?} on {}", db.backend_name);
        assert_eq!(seen.iter().map(|u| u.id).collect::<HashSet<_>>().len(), 250);
        let keys: Vec<(String, u64)> = seen.iter().map(|u| (u.username.clone(), u.traffic_used_bytes)).collect();
        match (field, direction) {
            (SortField::Username, _) => assert!(keys.windows(2).all(|w| w[0].0 < w[1].0)),
            (SortField::TrafficUsed, _) => assert!(keys.windows(2).all(|w| w[0].1 >= w[1].1)),
            _ => {}
        }
    }
    // Jumping to a page gives the same rows as walking to it.
    let sort = UserSort { field: SortField::Username, direction: SortDirection::Ascending };
    let third = directory.list_users(&ListQuery { sort, page_number: 3, ..list(40) }).await.unwrap();
    assert_eq!(third.page_number, 3);
    assert_eq!(third.users[0].username, "user00080");
}

async fn page_tokens_are_bound_to_their_query(db: &TestDb) {
    let directory = db.directory().await;
    seed(&directory, 30).await;
    let first = directory.list_users(&list(10)).await.unwrap();
    let token = first.next_page_token.unwrap();
    let other_filter = ListQuery {
        filter: UserFilter { statuses: vec![UserStatus::Active], ..UserFilter::default() },
        page_token: Some(token.clone()),
        ..list(10)
    };
    assert_eq!(directory.list_users(&other_filter).await.unwrap_err().reason(), "INVALID_PAGE_TOKEN");
    let mut forged = token.clone().into_bytes();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    let forged = ListQuery { page_token: Some(String::from_utf8(forged).unwrap()), ..list(10) };
    assert_eq!(directory.list_users(&forged).await.unwrap_err().reason(), "INVALID_PAGE_TOKEN");
    let garbage = ListQuery { page_token: Some("'; DROP TABLE vpn_users; --".into()), ..list(10) };
    assert_eq!(directory.list_users(&garbage).await.unwrap_err().reason(), "INVALID_PAGE_TOKEN");
    // A different page size is allowed with the same token.
    let resized = ListQuery { page_token: Some(token), ..list(25) };
    assert_eq!(directory.list_users(&resized).await.unwrap().users.len(), 20);
}

async fn filters_mean_the_same_on_both_backends(db: &TestDb) {
    let directory = db.directory().await;
    let users = seed(&directory, 40).await;
    let mut odd = NewUser::new("Percent_Man", "weird%_\\@example.com");
    odd.note = "100%".into();
    directory.create_users(vec![odd], BatchMode::AllOrNothing).await.unwrap();
    let check = |filter: UserFilter, expected: u64| {
        let directory = directory.clone();
        async move {
            let page = directory
                .list_users(&ListQuery { filter: filter.clone(), include_total_size: true, ..list(100) })
                .await
                .unwrap();
            assert_eq!(page.total_size, Some(expected), "{filter:?}");
            assert_eq!(page.users.len() as u64, expected, "{filter:?}");
        }
    };
    check(UserFilter { username_pattern: Some("user0001?".into()), ..UserFilter::default() }, 10).await;
    check(UserFilter { username_pattern: Some("USER0000*".into()), ..UserFilter::default() }, 10).await;
    check(UserFilter { username_pattern: Some("percent_man".into()), ..UserFilter::default() }, 1).await;
    check(UserFilter { username_pattern: Some("percent?man".into()), ..UserFilter::default() }, 1).await;
    check(UserFilter { username_pattern: Some("user%".into()), ..UserFilter::default() }, 0).await;
    check(UserFilter { email_pattern: Some("weird%_\\@*".into()), ..UserFilter::default() }, 1).await;
    check(UserFilter { email: Some("user00003@example.com".into()), ..UserFilter::default() }, 1).await;
    check(UserFilter { statuses: vec![UserStatus::Active, UserStatus::Expired], ..UserFilter::default() }, 21).await;
    check(UserFilter { protocols: vec![VpnProtocol::Vless], ..UserFilter::default() }, 6).await;
    let traffic = ByteRange { min_bytes: Some(10_000), max_bytes: Some(19_000) };
    check(UserFilter { traffic_used: traffic, ..UserFilter::default() }, 10).await;
    let huge = ByteRange { min_bytes: Some(u64::MAX), max_bytes: None };
    check(UserFilter { traffic_used: huge, ..UserFilter::default() }, 0).await;
    let created =
        InstantRange { start_micros: Some(users[10].created_at_micros), end_micros: Some(users[19].created_at_micros) };
    let within = directory
        .list_users(&ListQuery { filter: UserFilter { created, ..UserFilter::default() }, ..list(100) })
        .await
        .unwrap();
    assert!(within.users.len() >= 10, "{}", within.users.len());
    let never = InstantRange { start_micros: Some(0), end_micros: None };
    check(UserFilter { expires: never, ..UserFilter::default() }, 0).await;
}

async fn search_escapes_input_and_ranks(db: &TestDb) {
    let directory = db.directory().await;
    let mut users = vec![
        NewUser::new("alice", "alice@example.com"),
        NewUser::new("alicia", "a.keys@corp.example"),
        NewUser::new("bob", "bob@example.com"),
    ];
    users[2].note = "Alice's brother; pays for alice too".into();
    directory.create_users(users, BatchMode::AllOrNothing).await.unwrap();

    let names =
        |hits: &[mesh_vpnusers::store::SearchHit]| hits.iter().map(|h| h.user.username.clone()).collect::<Vec<_>>();
    let hits = directory.search_users("alice", 10, None).await.unwrap().hits;
    assert_eq!(names(&hits).into_iter().collect::<HashSet<_>>(), HashSet::from(["alice".to_owned(), "bob".to_owned()]));
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let hits = directory.search_users("ali", 10, None).await.unwrap().hits;
    assert_eq!(hits.len(), 3, "prefix match on {}", db.backend_name);
    let hits = directory.search_users("KEYS cor", 10, None).await.unwrap().hits;
    assert_eq!(names(&hits), ["alicia"], "exact words, the last a prefix, on {}", db.backend_name);
    // Only the last word is a prefix: a finished word must match a whole word.
    assert!(directory.search_users("ali corp", 10, None).await.unwrap().hits.is_empty(), "{}", db.backend_name);
    for hostile in [
        "\"",
        "alice\" OR \"bob",
        "*",
        "NEAR(alice bob)",
        "alice:* | bob",
        "'); DROP TABLE vpn_users; --",
        "a & !b",
        "(((",
        "\\",
    ] {
        let result = directory.search_users(hostile, 10, None).await;
        assert!(result.is_ok(), "{hostile:?} on {}: {result:?}", db.backend_name);
    }
    assert!(directory.search_users("(((", 10, None).await.unwrap().hits.is_empty());
    assert_eq!(directory.search_users("", 10, None).await.unwrap_err().reason(), "INVALID_QUERY");
    assert_eq!(directory.get_user(hits[0].user.id).await.unwrap().username, "alicia", "the table survived");

    let first = directory.search_users("example", 2, None).await.unwrap();
    assert_eq!(first.hits.len(), 2);
    let second = directory.search_users("example", 2, first.next_page_token.as_deref()).await.unwrap();
    assert_eq!(second.hits.len(), 1);
    assert!(second.next_page_token.is_none());
    let wrong_query = directory.search_users("alice", 2, first.next_page_token.as_deref()).await.unwrap_err();
    assert_eq!(wrong_query.reason(), "INVALID_PAGE_TOKEN");
}

async fn stats_count_sum_and_bucket_by_day(db: &TestDb) {
    let directory = db.directory().await;
    seed(&directory, 24).await;
    let stats = directory.stats(7).await.unwrap();
    assert_eq!(stats.total_users, 24);
    assert_eq!(stats.by_status.iter().map(|(_, n)| n).sum::<u64>(), 24);
    assert_eq!(stats.by_status[0], (UserStatus::Active, 6));
    assert_eq!(stats.by_protocol.len(), 6);
    assert_eq!(stats.traffic_used_total_bytes, (0..24).map(|i| i * 1000).sum::<u64>());
    assert_eq!(stats.traffic_limit_total_bytes, 12 * 50_000);
    // Even users have a 50 000 limit; those with i * 1000 >= 50 000 are none below 50.
    assert_eq!(stats.over_limit_users, 0);
    assert_eq!(stats.signups_per_day.len(), 7);
    assert_eq!(stats.signups_per_day.last().unwrap().1, 24);
    assert!(stats.signups_per_day.windows(2).all(|w| w[1].0 - w[0].0 == 86_400_000_000));
    assert_eq!(directory.stats(367).await.unwrap_err().reason(), "INVALID_SIGNUP_DAYS");
}

async fn bulk_status_by_ids_and_by_filter(db: &TestDb) {
    let directory = db.directory().await;
    let users = seed(&directory, 20).await;
    let ghost = Uuid::now_v7();
    let ids: Vec<Uuid> = users.iter().take(5).map(|u| u.id).chain([ghost]).collect();
    let outcome = directory.set_status(UserStatus::Suspended, &StatusSelector::Ids(ids)).await.unwrap();
    assert_eq!(outcome.affected_count, 5);
    assert_eq!(outcome.not_found_ids, [ghost]);
    assert_eq!(directory.get_user(users[0].id).await.unwrap().status, UserStatus::Suspended);

    let filter = UserFilter { protocols: vec![VpnProtocol::WireGuard], ..UserFilter::default() };
    let outcome = directory.set_status(UserStatus::Disabled, &StatusSelector::Filter(Box::new(filter))).await.unwrap();
    assert_eq!(outcome.affected_count, 4);
    let empty = directory.set_status(UserStatus::Disabled, &StatusSelector::Filter(Box::default())).await;
    assert_eq!(empty.unwrap_err().reason(), "EMPTY_FILTER");
}

async fn export_walks_every_matching_user(db: &TestDb) {
    let directory = db.directory().await;
    seed(&directory, 55).await;
    let filter = UserFilter { statuses: vec![UserStatus::Active], ..UserFilter::default() };
    let mut after = None;
    let mut exported = Vec::new();
    loop {
        let chunk = directory.export_chunk(&filter, after, 5).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        after = chunk.last().map(|u| u.id);
        exported.extend(chunk);
    }
    assert_eq!(exported.len(), 14);
    assert!(exported.windows(2).all(|w| w[0].id < w[1].id));
}

async fn reopening_keeps_users_and_tokens(db: &TestDb) {
    let directory = db.directory().await;
    seed(&directory, 12).await;
    let token = directory.list_users(&list(5)).await.unwrap().next_page_token.unwrap();
    drop(directory);
    let reopened = db.directory().await;
    let page = reopened.list_users(&ListQuery { page_token: Some(token), ..list(5) }).await.unwrap();
    assert_eq!(page.page_number, 2);
    assert_eq!(page.users.len(), 5);
}

async fn usernames_sort_in_byte_order_on_both(db: &TestDb) {
    let directory = db.directory().await;
    let users = ["bob", "Zed", "alice", "Bob", "0day"].map(|name| NewUser::new(name, "u@example.com"));
    directory.create_users(users.to_vec(), BatchMode::AllOrNothing).await.unwrap();
    let sort = UserSort { field: SortField::Username, direction: SortDirection::Ascending };
    let mut query = ListQuery { sort, ..list(2) };
    let mut names = Vec::new();
    loop {
        let page = directory.list_users(&query).await.unwrap();
        names.extend(page.users.into_iter().map(|user| user.username));
        match page.next_page_token {
            Some(token) => query.page_token = Some(token),
            None => break,
        }
    }
    assert_eq!(names, ["0day", "Bob", "Zed", "alice", "bob"], "{}", db.backend_name);
}

/// A keyed create whose "response" is the created ids in order, encoded as text.
async fn keyed_create(
    store: &UserStore,
    key: &IdempotencyKey,
    expires_at_micros: i64,
    names: &[&str],
) -> Result<Written<String>, mesh_vpnusers::VpnUsersError> {
    let users = names.iter().map(|name| NewUser::new(*name, format!("{name}@example.com"))).collect();
    let claim = IdempotencyClaim { key, expires_at_micros };
    store
        .create_users_keyed(users, BatchMode::PerItem, claim, |outcomes| {
            let ids: Vec<String> = outcomes
                .iter()
                .map(|outcome| outcome.as_ref().map_or("refused".to_owned(), |user| user.id.to_string()))
                .collect();
            let response = ids.join(",");
            let encoded = response.clone().into_bytes();
            (response, encoded)
        })
        .await
}

fn replayed_text(written: Written<String>) -> String {
    match written {
        Written::Replayed(encoded) => String::from_utf8(encoded).unwrap(),
        Written::Done(response) => panic!("expected a replay, the write ran again: {response}"),
    }
}

async fn idempotency_keys_persist_and_expire(db: &TestDb) {
    let store = db.store().await;
    let tomorrow = mesh_vpnusers::model::now_micros() + 86_400_000_000;
    let key = IdempotencyKey::parse("k-1".into(), "CreateUsers", b"mia").unwrap().unwrap();
    let Written::Done(first) = keyed_create(&store, &key, tomorrow, &["mia"]).await.unwrap() else {
        panic!("a new key writes");
    };
    // The key lives in the database: a reopened store still answers the retry.
    drop(store);
    let store = db.store().await;
    assert_eq!(replayed_text(keyed_create(&store, &key, tomorrow, &["mia"]).await.unwrap()), first);
    let other = IdempotencyKey::parse("k-1".into(), "CreateUsers", b"noah").unwrap().unwrap();
    let error = keyed_create(&store, &other, tomorrow, &["noah"]).await.unwrap_err();
    assert_eq!(error.reason(), "REQUEST_ID_REUSED");

    // An expired key is forgotten: the same key carries a new request.
    let expired = IdempotencyKey::parse("k-2".into(), "CreateUsers", b"olga").unwrap().unwrap();
    let past = mesh_vpnusers::model::now_micros() - 1;
    assert!(matches!(keyed_create(&store, &expired, past, &["olga"]).await.unwrap(), Written::Done(_)));
    let reused = IdempotencyKey::parse("k-2".into(), "CreateUsers", b"pete").unwrap().unwrap();
    assert!(matches!(keyed_create(&store, &reused, tomorrow, &["pete"]).await.unwrap(), Written::Done(_)));
    assert_eq!(store.count(&UserFilter::default()).await.unwrap(), 3, "mia, olga and pete, each once");
}

async fn concurrent_retries_write_once(db: &TestDb) {
    let store = db.store().await;
    let tomorrow = mesh_vpnusers::model::now_micros() + 86_400_000_000;
    let key = IdempotencyKey::parse("race".into(), "CreateUsers", b"batch").unwrap().unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("racer{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Two identical calls at once (a client retrying before the first answered):
    // one writes, the other waits for it and replays its response.
    let (left, right) =
        tokio::join!(keyed_create(&store, &key, tomorrow, &names), keyed_create(&store, &key, tomorrow, &names));
    let texts: Vec<(bool, String)> = [left.unwrap(), right.unwrap()]
        .into_iter()
        .map(|written| match written {
            Written::Done(response) => (true, response),
            Written::Replayed(encoded) => (false, String::from_utf8(encoded).unwrap()),
        })
        .collect();
    assert_eq!(texts.iter().filter(|(done, _)| *done).count(), 1, "{}: exactly one call wrote", db.backend_name);
    assert_eq!(texts[0].1, texts[1].1, "both callers see the same response");
    assert!(!texts[0].1.contains("refused"));
    assert_eq!(store.count(&UserFilter::default()).await.unwrap(), 50);
}

on_both_backends!(
    idempotency_keys_persist_and_expire,
    concurrent_retries_write_once,
    usernames_sort_in_byte_order_on_both,
    create_then_read_back,
    duplicate_usernames_per_item_and_all_or_nothing,
    large_batches_keep_per_item_statuses,
    concurrent_batches_all_commit,
    batch_limits_are_enforced,
    updates_change_fields_and_refuse_conflicts,
    deletes_report_unknown_ids,
    keyset_pages_cover_every_user_once_in_order,
    page_tokens_are_bound_to_their_query,
    filters_mean_the_same_on_both_backends,
    search_escapes_input_and_ranks,
    stats_count_sum_and_bucket_by_day,
    bulk_status_by_ids_and_by_filter,
    export_walks_every_matching_user,
    reopening_keeps_users_and_tokens,
);
