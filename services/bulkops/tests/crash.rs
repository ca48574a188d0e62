//! Crash safety with a real process, on SQLite and PostgreSQL: BulkOps runs
//! as a child process (this test binary re-executed into `bulkops_child`) and
//! is killed with SIGKILL mid-job; a fresh replica on the same database
//! finishes the job. The simulator's call log shows every domain acted on
//! exactly once, a domain that was already in the wanted state is not "undone"
//! into a state it never had, and a resumed backup is not run twice.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use mesh_proto::bulkops::v1 as pb;
use mesh_proto::bulkops::v1::bulk_ops_client::BulkOpsClient;
use mesh_virtualmin_sim::{Fault, FaultRule};
use sea_orm::{ConnectionTrait, Statement};
use support::{ChildBulkOps, TestDb, Virtualmin, eventually, request, watch_to_end};
use tonic::transport::Channel;

/// The BulkOps child process of the tests below; does nothing when run alone.
#[test]
#[ignore = "the BulkOps child process of the crash tests; they run it"]
fn bulkops_child() {
    support::serve_as_child();
}

async fn counts(client: &mut BulkOpsClient<Channel>, job_id: &str) -> pb::TargetCounts {
    let job = client.get_job(pb::GetJobRequest { job_id: job_id.to_owned(), include_targets: false }).await;
    job.expect("get job").into_inner().job.and_then(|job| job.counts).unwrap_or_default()
}

async fn a_job_survives_kill_minus_9_and_acts_on_each_domain_once(db: &TestDb) {
    let virtualmin = Virtualmin::start(400, 16).await;
    let domains: Vec<String> =
        virtualmin.states().await.into_iter().filter(|(_, suspended, _)| !suspended).map(|(name, ..)| name).collect();
    assert!(domains.len() > 300, "{}", domains.len());
    virtualmin
        .simulator
        .inject(FaultRule::always(Fault::Latency(Duration::from_millis(10))).for_program("disable-domain"));

    let first = ChildBulkOps::spawn(db, &virtualmin);
    let mut client = first.client().await;
    let mut start = request(pb::OperationKind::Suspend, &domains, pb::BulkMode::BestEffort);
    start.max_concurrency = 4;
    let job_id = client.start_bulk_operation(start).await.unwrap().into_inner().job_id;
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner();
    let half = domains.len() / 2;
    let mut done = 0;
    while done < half {
        done += stream.message().await.unwrap().expect("progress").results.len();
    }
    first.kill_9();
    drop(stream);
    let before_restart = virtualmin.calls_per_domain("disable-domain").len();
    assert!(before_restart >= half && before_restart < domains.len(), "killed mid-job: {before_restart}");

    let second = ChildBulkOps::spawn(db, &virtualmin);
    let mut client = second.client().await;
    let (_, job) = watch_to_end(&mut client, &job_id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}", db.backend_name);
    let result = job.result.unwrap();
    assert_eq!(result.successful_count as usize, domains.len());
    assert_eq!(result.failed_count, 0);
    let calls = virtualmin.calls_per_domain("disable-domain");
    assert_eq!(calls.len(), domains.len(), "no domain forgotten");
    assert!(calls.values().all(|n| *n == 1), "no domain acted on twice: {calls:?}");
    assert!(virtualmin.states().await.iter().all(|(_, suspended, _)| *suspended));
}

async fn a_domain_already_suspended_is_not_activated_by_the_rollback_after_a_crash(db: &TestDb) {
    let virtualmin = Virtualmin::start(60, 24).await;
    let before = virtualmin.states().await;
    let suspended: Vec<String> = before.iter().filter(|(_, s, _)| *s).map(|(n, ..)| n.clone()).take(4).collect();
    let active: Vec<String> = before.iter().filter(|(_, s, _)| !*s).map(|(n, ..)| n.clone()).take(13).collect();
    assert!(suspended.len() >= 2 && active.len() == 13, "the data set has both kinds of domain");
    // Already-suspended domains among the first ones, and an active one last that will fail.
    let mut domains: Vec<String> = suspended.iter().cloned().chain(active[..12].iter().cloned()).collect();
    let failing = active[12].clone();
    domains.push(failing.clone());
    // Every target but the last is in flight at once, each held 5 s after taking effect.
    virtualmin
        .simulator
        .inject(FaultRule::always(Fault::Latency(Duration::from_secs(5))).for_program("disable-domain"));
    virtualmin
        .simulator
        .inject(FaultRule::always(Fault::FailForDomains(vec![failing.clone()])).for_program("disable-domain"));

    let first = ChildBulkOps::spawn(db, &virtualmin);
    let mut client = first.client().await;
    let mut start = request(pb::OperationKind::Suspend, &domains, pb::BulkMode::Atomic);
    start.max_concurrency = u32::try_from(domains.len() - 1).unwrap();
    start.options = Some(pb::OperationOptions { suspend_reason: "crash test".into(), ..Default::default() });
    let job_id = client.start_bulk_operation(start).await.unwrap().into_inner().job_id;
    let in_flight = u32::try_from(domains.len() - 1).unwrap();
    eventually("every target but the last in flight", || {
        let (mut client, job_id) = (client.clone(), job_id.clone());
        async move { counts(&mut client, &job_id).await.in_flight == in_flight }
    })
    .await;
    first.kill_9();
    virtualmin.simulator.clear_faults();
    virtualmin
        .simulator
        .inject(FaultRule::always(Fault::FailForDomains(vec![failing.clone()])).for_program("disable-domain"));

    let second = ChildBulkOps::spawn(db, &virtualmin);
    let mut client = second.client().await;
    let (_, job) = watch_to_end(&mut client, &job_id).await;
    assert_eq!(job.state(), pb::JobState::Compensated, "{}", db.backend_name);
    let result = job.result.as_ref().unwrap();
    assert!(result.rollback_performed);
    assert_eq!((result.successful_count, result.failed_count), (in_flight, 1));
    assert_eq!(job.counts.unwrap().compensated, 12, "only the domains the job suspended are undone");
    assert_eq!(virtualmin.states().await, before, "the simulator's state is exactly as before the job");
    let enabled = virtualmin.calls_per_domain("enable-domain");
    assert_eq!(enabled.keys().cloned().collect::<HashSet<_>>(), active[..12].iter().cloned().collect());
    assert!(enabled.values().all(|n| *n == 1));
    assert!(virtualmin.calls_per_domain("disable-domain").values().all(|n| *n == 1), "none acted on twice");

    let detail = client.get_job(pb::GetJobRequest { job_id, include_targets: true }).await.unwrap().into_inner();
    for target in detail.targets.iter().filter(|t| suspended.contains(&t.target.as_ref().unwrap().domain_name)) {
        assert_eq!(target.state(), pb::TargetState::Succeeded, "{target:?}");
        assert!(target.detail.contains("already suspended before the job"), "{}", target.detail);
    }
}

async fn a_resumed_backup_is_found_by_its_key_not_run_again(db: &TestDb) {
    let virtualmin = Virtualmin::start(10, 8).await;
    let domains: Vec<String> = virtualmin.simulator.domain_names().into_iter().take(6).collect();
    // Each backup runs 3 s, so all six are still running when BulkOps is killed.
    virtualmin.simulator.inject(FaultRule::always(Fault::Latency(Duration::from_secs(3))).for_program("backup-domain"));

    let first = ChildBulkOps::spawn(db, &virtualmin);
    let mut client = first.client().await;
    let mut start = request(pb::OperationKind::Backup, &domains, pb::BulkMode::BestEffort);
    start.max_concurrency = 6;
    start.options = Some(pb::OperationOptions { backup_directory: "/backup/nightly".into(), ..Default::default() });
    let job_id = client.start_bulk_operation(start).await.unwrap().into_inner().job_id;
    let database = db.connect().await;
    let backend = database.get_database_backend();
    let with_operation = Statement::from_sql_and_values(
        backend,
        match backend {
            sea_orm::DbBackend::Postgres => {
                "SELECT COUNT(*) AS n FROM bulk_targets WHERE job_id = $1 AND operation_id <> ''"
            }
            _ => "SELECT COUNT(*) AS n FROM bulk_targets WHERE job_id = ? AND operation_id <> ''",
        },
        [job_id.clone().into()],
    );
    eventually("every backup started and its operation id persisted", || {
        let (database, statement) = (&database, with_operation.clone());
        async move {
            let row = database.query_one_raw(statement).await.unwrap().unwrap();
            row.try_get::<i64>("", "n").unwrap() == 6
        }
    })
    .await;
    first.kill_9();
    assert_eq!(virtualmin.calls_per_domain("backup-domain").len(), 6);
    // A crash between BackupDomain's answer and the write of its operation id
    // leaves an issued target without the id: that stored state, made exactly,
    // for half the targets.
    let forget = Statement::from_sql_and_values(
        backend,
        match backend {
            sea_orm::DbBackend::Postgres => {
                "UPDATE bulk_targets SET operation_id = '' WHERE job_id = $1 AND idx < 3 AND state = 'issued'"
            }
            _ => "UPDATE bulk_targets SET operation_id = '' WHERE job_id = ? AND idx < 3 AND state = 'issued'",
        },
        [job_id.clone().into()],
    );
    assert_eq!(database.execute_raw(forget).await.unwrap().rows_affected(), 3);

    let second = ChildBulkOps::spawn(db, &virtualmin);
    let mut client = second.client().await;
    let (results, job) = watch_to_end(&mut client, &job_id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}", db.backend_name);
    assert_eq!(job.result.unwrap().successful_count, 6);
    assert!(results.iter().all(|r| r.detail.starts_with("archive at /backup/nightly/")), "{results:?}");
    let calls = virtualmin.calls_per_domain("backup-domain");
    assert_eq!(calls.len(), 6);
    assert!(calls.values().all(|n| *n == 1), "no backup was run twice: {calls:?}");
}

on_both_backends!(
    a_job_survives_kill_minus_9_and_acts_on_each_domain_once,
    a_domain_already_suspended_is_not_activated_by_the_rollback_after_a_crash,
    a_resumed_backup_is_found_by_its_key_not_run_again,
);
