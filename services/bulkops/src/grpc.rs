//! `BulkOpsGrpc`: the `mesh.bulkops.v1.BulkOps` adapter. It converts wire
//! types to [`crate::jobs`] requests and stored rows back to wire types,
//! and nothing else; errors become statuses in `mesh_kit::error`.

use std::pin::Pin;
use std::time::Duration;

use mesh_kit::correlation;
use mesh_kit::to_status;
use mesh_proto::bulkops::v1 as pb;
use mesh_proto::bulkops::v1::start_bulk_operation_request::TargetSet as PbTargetSet;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::BulkOpsError;
use crate::jobs::{Jobs, Selector, StartRequest, TargetSet};
use crate::model::{BulkMode, BulkOutcome, Failure, JobState, OperationKind, Target, TargetCounts, TargetState};
use crate::store::{Created, JobRow, JobStore, TargetRow, now_micros};

/// Jobs per ListJobs page when the request gives 0.
const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest ListJobs page.
const MAX_PAGE_SIZE: u32 = 500;
/// A watcher of a job run by another replica reads the store this often.
const WATCH_POLL: Duration = Duration::from_secs(1);
/// Shortest gap between two progress messages: outcomes in a burst share one.
const WATCH_COALESCE: Duration = Duration::from_millis(50);
/// Database errors in a row a watcher rides out before it reports one.
const WATCH_STORE_RETRIES: u32 = 5;

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct BulkOpsGrpc {
    jobs: Jobs,
}

impl BulkOpsGrpc {
    /// Serves `jobs`.
    #[must_use]
    pub fn new(jobs: Jobs) -> Self {
        Self { jobs }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::bulk_ops_server::BulkOps for BulkOpsGrpc {
    async fn start_bulk_operation(
        &self,
        request: Request<pb::StartBulkOperationRequest>,
    ) -> Result<Response<pb::StartBulkOperationResponse>, Status> {
        let request = start_request(request.into_inner());
        let created = self.jobs.start(request).await.map_err(|e| to_status(&e))?;
        let (row, created) = match created {
            Created::New(row) => (row, true),
            Created::Existing(row) => (row, false),
        };
        let job = job_message(self.jobs.store(), &row, true).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::StartBulkOperationResponse { job_id: row.id, created, job: Some(job) }))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let job_id = request.into_inner().job_id;
        self.jobs.get(&job_id).await.map_err(|e| to_status(&e))?;
        let (sender, receiver) = mpsc::channel(16);
        let store = self.jobs.store().clone();
        let changes = self.jobs.runner().events().subscribe();
        let watch = watch_loop(store, changes, job_id, sender);
        // Errors inside the stream carry the caller's correlation id too.
        match correlation::current() {
            Some(context) => tokio::spawn(correlation::scope(context, watch)),
            None => tokio::spawn(watch),
        };
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let request = request.into_inner();
        let row = self.jobs.get(&request.job_id).await.map_err(|e| to_status(&e))?;
        let job = job_message(self.jobs.store(), &row, true).await.map_err(|e| to_status(&e))?;
        let targets = if request.include_targets {
            let rows = self.jobs.store().targets(&row.id).await.map_err(|e| to_status(&BulkOpsError::from(e)))?;
            rows.iter().map(target_result).collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::GetJobResponse { job: Some(job), targets }))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size > MAX_PAGE_SIZE => {
                return Err(to_status(&BulkOpsError::PageSizeTooLarge { max: MAX_PAGE_SIZE }));
            }
            size => size,
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(parse_page_token(&request.page_token).ok_or_else(|| to_status(&BulkOpsError::InvalidPageToken))?)
        };
        let state = job_state_filter(request.state());
        let store = self.jobs.store();
        let rows = store.list_jobs(page_size, after, state).await.map_err(|e| to_status(&BulkOpsError::from(e)))?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            jobs.push(job_message(store, row, false).await.map_err(|e| to_status(&e))?);
        }
        let next_page_token = match rows.last() {
            Some(last) if rows.len() == page_size as usize => format!("{}:{}", last.created_at_micros, last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let row = self.jobs.cancel(&request.into_inner().job_id).await.map_err(|e| to_status(&e))?;
        let job = job_message(self.jobs.store(), &row, true).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::CancelJobResponse { job: Some(job) }))
    }
}

/// Sends progress until the job is final or the caller goes away.
async fn watch_loop(
    store: JobStore,
    mut changes: tokio::sync::watch::Receiver<u64>,
    job_id: String,
    sender: mpsc::Sender<Result<pb::WatchJobResponse, Status>>,
) {
    let mut last_seq = 0;
    let mut store_errors = 0;
    loop {
        changes.borrow_and_update();
        let message = async {
            let row = store.job(&job_id).await?.ok_or_else(|| BulkOpsError::JobNotFound { job_id: job_id.clone() })?;
            let finished = store.targets_finished_after(&job_id, last_seq).await?;
            let job = job_message(&store, &row, true).await?;
            Ok::<_, BulkOpsError>((row, finished, job))
        }
        .await;
        let (row, finished, job) = match message {
            Ok(parts) => {
                store_errors = 0;
                parts
            }
            // A busy database (a pool that times out under load) should not
            // end a watcher's stream: the job goes on, so the watch does too.
            Err(BulkOpsError::Database { .. }) if store_errors < WATCH_STORE_RETRIES => {
                store_errors += 1;
                tokio::time::sleep(WATCH_POLL).await;
                continue;
            }
            Err(error) => {
                let _ = sender.send(Err(to_status(&error))).await;
                return;
            }
        };
        last_seq = finished.last().map_or(last_seq, |target| target.finish_seq);
        let is_final = JobState::parse(&row.state).is_some_and(JobState::is_final);
        let eta = if is_final { None } else { job.counts.as_ref().and_then(|counts| eta(&row, counts)) };
        let response =
            pb::WatchJobResponse { job: Some(job), results: finished.iter().map(target_result).collect(), eta };
        if sender.send(Ok(response)).await.is_err() || is_final {
            return;
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(WATCH_POLL) => {}
            () = sender.closed() => return,
        }
        tokio::time::sleep(WATCH_COALESCE).await;
    }
}

/// Time left at the rate so far; `None` before the first outcome.
fn eta(row: &JobRow, counts: &pb::TargetCounts) -> Option<prost_types::Duration> {
    let started = row.started_at_micros?;
    let done = counts.total - counts.pending - counts.in_flight;
    if done == 0 {
        return None;
    }
    let remaining = counts.pending + counts.in_flight;
    let elapsed = u64::try_from(now_micros().saturating_sub(started)).unwrap_or(0);
    let left = Duration::from_micros(elapsed.saturating_mul(u64::from(remaining)) / u64::from(done));
    prost_types::Duration::try_from(left).ok()
}

fn start_request(request: pb::StartBulkOperationRequest) -> StartRequest {
    let correlation_id = correlation::current_correlation_id().map(|id| id.to_string()).unwrap_or_default();
    let kind = match request.kind() {
        pb::OperationKind::Suspend => Some(OperationKind::Suspend),
        pb::OperationKind::Activate => Some(OperationKind::Activate),
        pb::OperationKind::Backup => Some(OperationKind::Backup),
        pb::OperationKind::HealthCheck => Some(OperationKind::HealthCheck),
        pb::OperationKind::Unspecified => None,
    };
    let mode = if request.mode() == pb::BulkMode::Atomic { BulkMode::Atomic } else { BulkMode::BestEffort };
    let targets = request.target_set.map(|set| match set {
        PbTargetSet::TargetList(list) => TargetSet::List(
            list.targets
                .into_iter()
                .map(|target| Target { server_id: target.server_id, domain_name: target.domain_name })
                .collect(),
        ),
        PbTargetSet::Selector(selector) => TargetSet::Selector(Selector {
            server_id: selector.server_id,
            owner_username: selector.owner_username,
            plan: selector.plan,
            name_contains: selector.name_contains,
            suspended: selector.suspended,
        }),
    });
    let options = request.options.unwrap_or_default();
    StartRequest {
        kind,
        targets,
        mode,
        max_concurrency: request.max_concurrency,
        idempotency_key: request.idempotency_key,
        suspend_reason: options.suspend_reason,
        backup_directory: options.backup_directory,
        correlation_id,
    }
}

/// The wire form of a job; `with_errors` adds the failed targets to a final job's result.
async fn job_message(store: &JobStore, row: &JobRow, with_errors: bool) -> Result<pb::Job, BulkOpsError> {
    let counts = store.counts(&row.id).await?;
    let state = JobState::parse(&row.state)
        .ok_or_else(|| BulkOpsError::CorruptRow { reason: format!("unknown job state {:?}", row.state) })?;
    let result = if state.is_final() {
        let errors = if with_errors {
            store
                .targets_in(&row.id, TargetState::Failed)
                .await?
                .iter()
                .map(|target| pb::TargetError {
                    target: Some(target_message(target)),
                    error: Some(error_status(target)),
                })
                .collect()
        } else {
            Vec::new()
        };
        let processing = match (row.started_at_micros, row.finished_at_micros) {
            (Some(start), Some(end)) => Duration::from_micros(u64::try_from(end - start).unwrap_or(0)),
            _ => Duration::ZERO,
        };
        let outcome = BulkOutcome::from_counts(&counts, row.rollback_performed, processing);
        Some(pb::BulkOperationResult {
            total_processed: outcome.total_processed,
            successful_count: outcome.successful_count,
            failed_count: outcome.failed_count,
            errors,
            rollback_performed: outcome.rollback_performed,
            processing_time: prost_types::Duration::try_from(outcome.processing_time).ok(),
            success_rate: outcome.success_rate,
        })
    } else {
        None
    };
    let stop_reason = (row.stop_code != 0).then(|| {
        status_message(&Failure {
            code: row.stop_code,
            reason: row.stop_reason.clone(),
            domain: crate::error::ERROR_DOMAIN.to_owned(),
            message: row.stop_message.clone(),
            retry_after: None,
        })
    });
    Ok(pb::Job {
        job_id: row.id.clone(),
        kind: kind_message(&row.kind).into(),
        mode: if row.mode == BulkMode::Atomic.as_str() { pb::BulkMode::Atomic } else { pb::BulkMode::BestEffort }
            .into(),
        state: job_state_message(state).into(),
        max_concurrency: u32::try_from(row.max_concurrency).unwrap_or(0),
        idempotency_key: row.idempotency_key.clone().unwrap_or_default(),
        options: Some(pb::OperationOptions {
            suspend_reason: row.suspend_reason.clone(),
            backup_directory: row.backup_directory.clone(),
        }),
        counts: Some(counts_message(&counts)),
        create_time: Some(timestamp(row.created_at_micros)),
        start_time: row.started_at_micros.map(timestamp),
        end_time: row.finished_at_micros.map(timestamp),
        cancel_requested: row.cancel_requested,
        result,
        stop_reason,
    })
}

fn kind_message(word: &str) -> pb::OperationKind {
    match OperationKind::parse(word) {
        Some(OperationKind::Suspend) => pb::OperationKind::Suspend,
        Some(OperationKind::Activate) => pb::OperationKind::Activate,
        Some(OperationKind::Backup) => pb::OperationKind::Backup,
        Some(OperationKind::HealthCheck) => pb::OperationKind::HealthCheck,
        None => pb::OperationKind::Unspecified,
    }
}

fn job_state_message(state: JobState) -> pb::JobState {
    match state {
        JobState::Pending => pb::JobState::Pending,
        JobState::Running => pb::JobState::Running,
        JobState::Compensating => pb::JobState::Compensating,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Compensated => pb::JobState::Compensated,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

fn job_state_filter(state: pb::JobState) -> Option<JobState> {
    match state {
        pb::JobState::Unspecified => None,
        pb::JobState::Pending => Some(JobState::Pending),
        pb::JobState::Running => Some(JobState::Running),
        pb::JobState::Compensating => Some(JobState::Compensating),
        pb::JobState::Succeeded => Some(JobState::Succeeded),
        pb::JobState::Failed => Some(JobState::Failed),
        pb::JobState::Compensated => Some(JobState::Compensated),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    }
}

fn target_state_message(word: &str) -> pb::TargetState {
    match TargetState::parse(word) {
        Some(TargetState::Pending) => pb::TargetState::Pending,
        Some(TargetState::Issued) => pb::TargetState::Issued,
        Some(TargetState::Succeeded) => pb::TargetState::Succeeded,
        Some(TargetState::Failed) => pb::TargetState::Failed,
        Some(TargetState::Skipped) => pb::TargetState::Skipped,
        Some(TargetState::Compensated) => pb::TargetState::Compensated,
        Some(TargetState::CompensationFailed) => pb::TargetState::CompensationFailed,
        None => pb::TargetState::Unspecified,
    }
}

fn counts_message(counts: &TargetCounts) -> pb::TargetCounts {
    pb::TargetCounts {
        total: counts.total,
        pending: counts.pending,
        in_flight: counts.in_flight,
        succeeded: counts.succeeded,
        failed: counts.failed,
        skipped: counts.skipped,
        compensated: counts.compensated,
        compensation_failed: counts.compensation_failed,
    }
}

fn target_message(row: &TargetRow) -> pb::Target {
    pb::Target { server_id: row.server_id.clone(), domain_name: row.domain_name.clone() }
}

fn error_status(row: &TargetRow) -> tonic_types::pb::Status {
    status_message(&Failure {
        code: row.error_code,
        reason: row.error_reason.clone(),
        domain: row.error_domain.clone(),
        message: row.error_message.clone(),
        retry_after: None,
    })
}

fn target_result(row: &TargetRow) -> pb::TargetResult {
    pb::TargetResult {
        index: u32::try_from(row.idx).unwrap_or(0),
        target: Some(target_message(row)),
        state: target_state_message(&row.state).into(),
        error: (row.error_code != 0).then(|| error_status(row)),
        detail: row.detail.clone(),
        compensation_error: (row.compensation_code != 0).then(|| {
            status_message(&Failure {
                code: row.compensation_code,
                reason: row.compensation_reason.clone(),
                domain: crate::error::ERROR_DOMAIN.to_owned(),
                message: row.compensation_message.clone(),
                retry_after: None,
            })
        }),
        start_time: row.started_at_micros.map(timestamp),
        end_time: row.finished_at_micros.map(timestamp),
    }
}

/// A recorded failure in the standard error model: code, message and an `ErrorInfo`.
fn status_message(failure: &Failure) -> tonic_types::pb::Status {
    let info = tonic_types::pb::ErrorInfo {
        reason: failure.reason.clone(),
        domain: failure.domain.clone(),
        metadata: std::collections::HashMap::new(),
    };
    tonic_types::pb::Status {
        code: failure.code,
        message: failure.message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_owned(),
            value: info.encode_to_vec(),
        }],
    }
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

fn parse_page_token(token: &str) -> Option<(i64, String)> {
    let (created, id) = token.split_once(':')?;
    uuid::Uuid::parse_str(id).ok()?;
    Some((created.parse().ok()?, id.to_owned()))
}
