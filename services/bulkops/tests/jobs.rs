//! BulkOps against the Virtualmin simulator with fault injection, on SQLite
//! and PostgreSQL: exact counts under injected failures, ATOMIC rollback to
//! the exact prior state, cancel, idempotency, empty and invalid requests,
//! the job timeout, backups and health checks, and two replicas sharing one
//! database without running a job twice.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use mesh_proto::bulkops::v1 as pb;
use mesh_proto::virtualmin::v1 as vpb;
use mesh_virtualmin_sim::{Fault, FaultRule};
use support::{BulkOps, TestDb, Virtualmin, reason_of, request, watch_to_end};
use tonic::Code;
use tonic_types::StatusExt as _;

fn active_domains(states: &[(String, bool, String)]) -> Vec<String> {
    states.iter().filter(|(_, suspended, _)| !suspended).map(|(name, _, _)| name.clone()).collect()
}

async fn best_effort_counts_are_exact_under_three_percent_failures(db: &TestDb) {
    let virtualmin = Virtualmin::start(1000, 25).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[]).await;
    let domains: Vec<String> = virtualmin.simulator.domain_names().into_iter().take(1000).collect();
    assert_eq!(domains.len(), 1000, "{}", db.backend_name);
    let failing: Vec<String> = domains.iter().step_by(33).take(30).cloned().collect();
    virtualmin
        .simulator
        .inject(FaultRule::always(Fault::FailForDomains(failing.clone())).for_program("disable-domain"));

    let mut client = bulkops.client().await;
    let mut start = request(pb::OperationKind::Suspend, &domains, pb::BulkMode::BestEffort);
    start.max_concurrency = 16;
    let started = client.start_bulk_operation(start).await.expect("start").into_inner();
    assert!(started.created);
    let (results, job) = watch_to_end(&mut client, &started.job_id).await;

    assert_eq!(job.state(), pb::JobState::Failed, "{}", db.backend_name);
    let result = job.result.expect("a final job has a result");
    assert_eq!((result.total_processed, result.successful_count, result.failed_count), (1000, 970, 30));
    assert!(!result.rollback_performed);
    assert!((result.success_rate - 0.97).abs() < 1e-9);
    let failed: HashSet<String> =
        result.errors.iter().map(|e| e.target.as_ref().unwrap().domain_name.clone()).collect();
    assert_eq!(failed, failing.iter().cloned().collect::<HashSet<_>>());
    assert!(result.errors.iter().all(|e| e.error.as_ref().is_some_and(|s| s.code != 0 && !s.details.is_empty())));
    // WatchJob delivered every target's outcome exactly once.
    assert_eq!(results.len(), 1000);
    assert_eq!(results.iter().map(|r| r.index).collect::<HashSet<_>>().len(), 1000);
    // Each domain was acted on exactly once: nothing retried, nothing forgotten.
    let calls = virtualmin.calls_per_domain("disable-domain");
    assert_eq!(calls.len(), 1000);
    assert!(calls.values().all(|count| *count == 1));
}

async fn atomic_failure_at_item_500_restores_the_exact_prior_state(db: &TestDb) {
    let virtualmin = Virtualmin::start(1000, 25).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[]).await;
    let before = virtualmin.states().await;
    let domains: Vec<String> = before.iter().map(|(name, _, _)| name.clone()).take(1000).collect();
    assert!(before.iter().any(|(_, suspended, _)| *suspended), "the data set has suspended domains to leave alone");
    let item_500 = domains[500].clone();
    virtualmin
        .simulator
        .inject(FaultRule::always(Fault::FailForDomains(vec![item_500.clone()])).for_program("disable-domain"));

    let mut client = bulkops.client().await;
    let mut start = request(pb::OperationKind::Suspend, &domains, pb::BulkMode::Atomic);
    start.max_concurrency = 8;
    start.options = Some(pb::OperationOptions { suspend_reason: "bulk test".into(), ..Default::default() });
    let started = client.start_bulk_operation(start).await.unwrap().into_inner();
    let (_, job) = watch_to_end(&mut client, &started.job_id).await;

    assert_eq!(job.state(), pb::JobState::Compensated, "{}", db.backend_name);
    let result = job.result.unwrap();
    assert!(result.rollback_performed);
    assert_eq!(result.failed_count, 1);
    assert_eq!(result.errors[0].target.as_ref().unwrap().domain_name, item_500);
    assert_eq!(job.stop_reason.as_ref().map(|s| s.code), Some(Code::Aborted as i32));
    let counts = job.counts.unwrap();
    assert_eq!(counts.succeeded + counts.compensated + counts.failed + counts.skipped, 1000);
    assert!(counts.skipped >= 400, "no new target starts after the failure: {counts:?}");
    assert_eq!(virtualmin.states().await, before, "the simulator's state is exactly as before");
    // Only domains this job suspended were activated again.
    let enabled = virtualmin.calls_per_domain("enable-domain");
    assert_eq!(u32::try_from(enabled.len()).unwrap(), counts.compensated);
    let was_suspended: HashSet<&String> = before.iter().filter(|(_, s, _)| *s).map(|(n, _, _)| n).collect();
    assert!(enabled.keys().all(|domain| !was_suspended.contains(domain)));
}

async fn cancel_stops_the_job_midway(db: &TestDb) {
    let virtualmin = Virtualmin::start(200, 8).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[]).await;
    let domains = active_domains(&virtualmin.states().await);
    virtualmin
        .simulator
        .inject(FaultRule::always(Fault::Latency(Duration::from_millis(20))).for_program("disable-domain"));

    let mut client = bulkops.client().await;
    let mut start = request(pb::OperationKind::Suspend, &domains, pb::BulkMode::BestEffort);
    start.max_concurrency = 2;
    let started = client.start_bulk_operation(start).await.unwrap().into_inner();
    let mut stream =
        client.watch_job(pb::WatchJobRequest { job_id: started.job_id.clone() }).await.unwrap().into_inner();
    let mut seen = 0;
    while seen < 5 {
        seen += stream.message().await.unwrap().expect("progress").results.len();
    }
    let cancelled = client.cancel_job(pb::CancelJobRequest { job_id: started.job_id.clone() }).await.unwrap();
    assert!(cancelled.into_inner().job.unwrap().cancel_requested);
    let (_, job) = watch_to_end(&mut client, &started.job_id).await;

    assert_eq!(job.state(), pb::JobState::Cancelled, "{}", db.backend_name);
    let counts = job.counts.unwrap();
    assert!(counts.skipped > 0 && counts.succeeded >= 5, "{counts:?}");
    assert_eq!(counts.succeeded + counts.skipped, u32::try_from(domains.len()).unwrap());
    // Skipped targets were never sent to Virtualmin.
    assert_eq!(u32::try_from(virtualmin.calls_per_domain("disable-domain").len()).unwrap(), counts.succeeded);
    // Cancelling a finished job changes nothing.
    let again = client.cancel_job(pb::CancelJobRequest { job_id: started.job_id }).await.unwrap().into_inner();
    assert_eq!(again.job.unwrap().state(), pb::JobState::Cancelled);
}

async fn a_duplicate_idempotency_key_returns_the_same_job(db: &TestDb) {
    let virtualmin = Virtualmin::start(20, 4).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[]).await;
    let domains = active_domains(&virtualmin.states().await);
    let mut client = bulkops.client().await;
    let mut start = request(pb::OperationKind::Suspend, &domains, pb::BulkMode::BestEffort);
    start.idempotency_key = "nightly-2026-11-23".into();

    let first = client.start_bulk_operation(start.clone()).await.unwrap().into_inner();
    let second = client.start_bulk_operation(start.clone()).await.unwrap().into_inner();
    assert!(first.created && !second.created);
    assert_eq!(first.job_id, second.job_id);
    watch_to_end(&mut client, &first.job_id).await;
    let third = client.start_bulk_operation(start.clone()).await.unwrap().into_inner();
    assert_eq!(third.job_id, first.job_id);
    assert_eq!(third.job.unwrap().state(), pb::JobState::Succeeded);
    let calls = virtualmin.calls_per_domain("disable-domain");
    assert!(calls.values().all(|count| *count == 1), "one job, each domain once");

    start.mode = pb::BulkMode::Atomic.into();
    let error = client.start_bulk_operation(start).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&error), "IDEMPOTENCY_KEY_REUSED");
    let listed = client.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.jobs.len(), 1, "{}", db.backend_name);
}

async fn an_empty_target_list_succeeds_with_a_zero_rate(db: &TestDb) {
    let virtualmin = Virtualmin::start(4, 4).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[]).await;
    let mut client = bulkops.client().await;
    let started =
        client.start_bulk_operation(request(pb::OperationKind::Suspend, &[], pb::BulkMode::Atomic)).await.unwrap();
    let (results, job) = watch_to_end(&mut client, &started.into_inner().job_id).await;
    assert!(results.is_empty());
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}", db.backend_name);
    let result = job.result.unwrap();
    assert_eq!((result.total_processed, result.successful_count, result.failed_count), (0, 0, 0));
    assert!(result.success_rate.abs() < f64::EPSILON);
    assert!(virtualmin.calls_per_domain("disable-domain").is_empty());
}

async fn bad_requests_are_refused_precisely(db: &TestDb) {
    let virtualmin = Virtualmin::start(4, 4).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[]).await;
    let mut client = bulkops.client().await;

    let mut unknown = request(pb::OperationKind::Suspend, &["example.com".to_owned()], pb::BulkMode::BestEffort);
    if let Some(pb::start_bulk_operation_request::TargetSet::TargetList(list)) = &mut unknown.target_set {
        list.targets[0].server_id = "nowhere".into();
    }
    let mut call = tonic::Request::new(unknown);
    call.metadata_mut().insert("x-correlation-id", "bulk-unknown-server".parse().unwrap());
    let error = client.start_bulk_operation(call).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&error), "UNKNOWN_SERVER");
    assert!(error.message().contains("nowhere"));
    let details = error.get_error_details();
    assert_eq!(details.error_info().unwrap().metadata["correlation_id"], "bulk-unknown-server");

    let no_kind = request(pb::OperationKind::Unspecified, &[], pb::BulkMode::BestEffort);
    assert_eq!(reason_of(&client.start_bulk_operation(no_kind).await.unwrap_err()), "KIND_REQUIRED");
    let mut too_wide = request(pb::OperationKind::Suspend, &[], pb::BulkMode::BestEffort);
    too_wide.max_concurrency = 100_000;
    assert_eq!(reason_of(&client.start_bulk_operation(too_wide).await.unwrap_err()), "CONCURRENCY_TOO_HIGH");
    let twice = vec!["a.example".to_owned(), "a.example".to_owned()];
    let duplicate = request(pb::OperationKind::Suspend, &twice, pb::BulkMode::BestEffort);
    assert_eq!(reason_of(&client.start_bulk_operation(duplicate).await.unwrap_err()), "DUPLICATE_TARGET");
    let backup = request(pb::OperationKind::Backup, &[], pb::BulkMode::BestEffort);
    assert_eq!(reason_of(&client.start_bulk_operation(backup).await.unwrap_err()), "INVALID_BACKUP_DIRECTORY");
    let missing =
        client.get_job(pb::GetJobRequest { job_id: uuid::Uuid::now_v7().to_string(), include_targets: false });
    assert_eq!(missing.await.unwrap_err().code(), Code::NotFound);
    let garbage = client.get_job(pb::GetJobRequest { job_id: "x".into(), include_targets: false });
    assert_eq!(reason_of(&garbage.await.unwrap_err()), "INVALID_JOB_ID");
    let token = client.list_jobs(pb::ListJobsRequest { page_token: "nope".into(), ..Default::default() });
    assert_eq!(reason_of(&token.await.unwrap_err()), "INVALID_PAGE_TOKEN");
    assert!(virtualmin.calls_per_domain("disable-domain").is_empty(), "{}", db.backend_name);
}

async fn the_job_timeout_bounds_a_job(db: &TestDb) {
    let virtualmin = Virtualmin::start(60, 4).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[("VIRTUALMIN_API_BULK_TIMEOUT", "1")]).await;
    let domains = active_domains(&virtualmin.states().await);
    virtualmin
        .simulator
        .inject(FaultRule::always(Fault::Latency(Duration::from_millis(100))).for_program("disable-domain"));
    let mut client = bulkops.client().await;
    let mut start = request(pb::OperationKind::Suspend, &domains, pb::BulkMode::BestEffort);
    start.max_concurrency = 1;
    let started = client.start_bulk_operation(start).await.unwrap().into_inner();
    let (_, job) = watch_to_end(&mut client, &started.job_id).await;
    assert_eq!(job.state(), pb::JobState::Failed, "{}", db.backend_name);
    let stop = job.stop_reason.expect("a stop reason");
    assert_eq!(stop.code, Code::DeadlineExceeded as i32);
    assert!(job.counts.unwrap().skipped > 0);
}

async fn backups_and_health_checks_report_what_they_did(db: &TestDb) {
    let virtualmin = Virtualmin::start(10, 4).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[]).await;
    let domains: Vec<String> = virtualmin.simulator.domain_names().into_iter().take(6).collect();
    let mut client = bulkops.client().await;

    let mut backup = request(pb::OperationKind::Backup, &domains[..3], pb::BulkMode::Atomic);
    backup.options = Some(pb::OperationOptions { backup_directory: "/backup/nightly".into(), ..Default::default() });
    virtualmin
        .simulator
        .inject(FaultRule::always(Fault::FailForDomains(vec![domains[2].clone()])).for_program("backup-domain"));
    backup.max_concurrency = 1;
    let started = client.start_bulk_operation(backup).await.unwrap().into_inner();
    let (_, job) = watch_to_end(&mut client, &started.job_id).await;
    // Two archives were written and cannot be removed through Virtualmin's API: recorded, not hidden.
    assert_eq!(job.state(), pb::JobState::Failed, "{}", db.backend_name);
    assert!(job.result.as_ref().unwrap().rollback_performed);
    let detail = client.get_job(pb::GetJobRequest { job_id: started.job_id, include_targets: true }).await.unwrap();
    let targets = detail.into_inner().targets;
    assert_eq!(targets[0].state(), pb::TargetState::CompensationFailed);
    assert!(targets[0].detail.contains("/backup/nightly/"), "{}", targets[0].detail);
    let compensation = targets[0].compensation_error.as_ref().expect("why the undo was not possible");
    assert!(compensation.message.contains(".tar.gz"));
    assert_eq!(targets[2].state(), pb::TargetState::Failed);

    virtualmin.simulator.clear_faults();
    let health = request(pb::OperationKind::HealthCheck, &domains[3..], pb::BulkMode::BestEffort);
    let started = client.start_bulk_operation(health).await.unwrap().into_inner();
    let (results, job) = watch_to_end(&mut client, &started.job_id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded);
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.detail.starts_with("server healthy")), "{results:?}");
}

async fn two_replicas_never_run_a_job_twice(db: &TestDb) {
    let virtualmin = Virtualmin::start(300, 16).await;
    let first = BulkOps::start(db, &virtualmin, &[]).await;
    let second = BulkOps::start(db, &virtualmin, &[]).await;
    let domains = active_domains(&virtualmin.states().await);
    let mut client_a = first.client().await;
    let mut client_b = second.client().await;
    let mut ids = Vec::new();
    for (n, chunk) in domains.chunks(domains.len().div_ceil(6)).enumerate() {
        let client = if n % 2 == 0 { &mut client_a } else { &mut client_b };
        let mut start = request(pb::OperationKind::Suspend, chunk, pb::BulkMode::BestEffort);
        start.max_concurrency = 4;
        ids.push(client.start_bulk_operation(start).await.unwrap().into_inner().job_id);
    }
    for id in &ids {
        let (_, job) = watch_to_end(&mut client_a, id).await;
        assert_eq!(job.state(), pb::JobState::Succeeded, "{}", db.backend_name);
    }
    let calls = virtualmin.calls_per_domain("disable-domain");
    assert_eq!(calls.len(), domains.len());
    assert!(calls.values().all(|count| *count == 1), "no domain acted on twice");
}

async fn rate_limited_targets_wait_and_are_retried_not_failed(db: &TestDb) {
    // 10 remote calls per second for the whole server: the job's 2 calls per
    // target (the prior-state read and the suspend) run into the limit often.
    let limit = [("VIRTUALMIN_RATE_LIMIT_MAX_CALLS", "10"), ("VIRTUALMIN_RATE_LIMIT_WINDOW", "1")];
    let virtualmin = Virtualmin::start_with(40, 8, &limit).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[]).await;
    let domains: Vec<String> = active_domains(&virtualmin.states().await).into_iter().take(12).collect();
    assert_eq!(domains.len(), 12);
    let mut client = bulkops.client().await;
    let mut start = request(pb::OperationKind::Suspend, &domains, pb::BulkMode::Atomic);
    start.max_concurrency = 6;
    let started = client.start_bulk_operation(start).await.unwrap().into_inner();
    let (results, job) = watch_to_end(&mut client, &started.job_id).await;

    assert_eq!(job.state(), pb::JobState::Succeeded, "{}: {:?}", db.backend_name, job.stop_reason);
    let result = job.result.unwrap();
    assert_eq!((result.successful_count, result.failed_count), (12, 0));
    assert!(!result.rollback_performed);
    assert_eq!(results.len(), 12);
    let calls = virtualmin.calls_per_domain("disable-domain");
    assert_eq!(calls.len(), 12);
    assert!(calls.values().all(|n| *n == 1), "refused calls never reached Virtualmin: {calls:?}");
    // The gateway did refuse calls of this job for the rate limit.
    let metrics = virtualmin.client().await.get_call_metrics(vpb::GetCallMetricsRequest::default()).await;
    let refused: u64 = metrics
        .unwrap()
        .into_inner()
        .programs
        .iter()
        .flat_map(|program| program.errors_by_reason.iter())
        .filter(|count| count.reason == "RATE_LIMITED")
        .map(|count| count.count)
        .sum();
    assert!(refused > 0, "the job ran into the rate limit");
}

async fn a_rate_limit_longer_than_the_job_fails_the_target(db: &TestDb) {
    // One call per minute: the advised wait is beyond a 2 s job.
    let limit = [("VIRTUALMIN_RATE_LIMIT_MAX_CALLS", "1"), ("VIRTUALMIN_RATE_LIMIT_WINDOW", "60")];
    let virtualmin = Virtualmin::start_with(4, 4, &limit).await;
    let bulkops = BulkOps::start(db, &virtualmin, &[("VIRTUALMIN_API_BULK_TIMEOUT", "2")]).await;
    let domains: Vec<String> = virtualmin.simulator.domain_names().into_iter().take(2).collect();
    let mut client = bulkops.client().await;
    let mut start = request(pb::OperationKind::Suspend, &domains, pb::BulkMode::BestEffort);
    start.max_concurrency = 1;
    let started = client.start_bulk_operation(start).await.unwrap().into_inner();
    let (_, job) = watch_to_end(&mut client, &started.job_id).await;
    assert_eq!(job.state(), pb::JobState::Failed, "{}", db.backend_name);
    let result = job.result.unwrap();
    assert_eq!(result.failed_count, 2, "{result:?}");
    for error in &result.errors {
        let status = error.error.as_ref().unwrap();
        assert_eq!(status.code, Code::ResourceExhausted as i32, "{status:?}");
    }
    assert!(virtualmin.calls_per_domain("disable-domain").len() <= 1);
}

on_both_backends!(
    rate_limited_targets_wait_and_are_retried_not_failed,
    a_rate_limit_longer_than_the_job_fails_the_target,
    best_effort_counts_are_exact_under_three_percent_failures,
    atomic_failure_at_item_500_restores_the_exact_prior_state,
    cancel_stops_the_job_midway,
    a_duplicate_idempotency_key_returns_the_same_job,
    an_empty_target_list_succeeds_with_a_zero_rate,
    bad_requests_are_refused_precisely,
    the_job_timeout_bounds_a_job,
    backups_and_health_checks_report_what_they_did,
    two_replicas_never_run_a_job_twice,
);
