//! `JobRunner`: claims jobs from the store and runs them.
//!
//! The order of writes is the crash-safety argument:
//! 1. SUSPEND and ACTIVATE read the domain's state first (GetDomain); a
//!    target is written `issued`, with that prior state, before its call;
//! 2. the outcome is written after the call returns; `changed` is whether the
//!    prior state differed from the wanted one;
//! 3. on resume (another replica, or this one restarted), an `issued` target
//!    is never called again blindly: its outcome is read back from
//!    Virtualmin (GetDomain shows whether the suspend took effect, and the
//!    stored prior state whether the job made it so or found it so; a
//!    backup's operation id, persisted as soon as known, is polled). A backup
//!    whose id was never learnt is asked for again under the same idempotency
//!    key (`bulkops-<job>-<index>-backup-<attempt>`), which VirtualminGateway
//!    answers with the first call's operation instead of a second backup.
//!
//! Undo (ATOMIC) follows the same rule with `compensation_issued`, and only
//! ever puts a domain back into its recorded prior state.
//!
//! A call VirtualminGateway refuses with RESOURCE_EXHAUSTED and a
//! `RetryInfo` (its per-server rate limit) did nothing: the runner waits the
//! advised delay, bounded by the job's deadline, and makes it again, instead
//! of failing the target. A job stopped while a target waits leaves that
//! target pending (then skipped).
//!
//! Outcomes are numbered (`finish_seq`) under one lock per job, so their
//! commits are in number order and WatchJob, reading "after the last number
//! I sent", never skips one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use mesh_kit::CancellationToken;
use mesh_kit::correlation::{self, CallContext, CorrelationId};
use tokio::sync::{Notify, OnceCell, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::model::{BulkMode, DomainState, Failure, JobState, OperationKind, TargetState};
use crate::store::{JobEnd, JobRow, JobStore, Outcome, TargetRow, now_micros};
use crate::virtualmin::{BackupProgress, Virtualmin, outcome_unknown, own_failure, within};

/// How long the undo of an ATOMIC job, and a read-back after an unclear
/// answer, may take; they run after the job's own time may have run out.
const CLEANUP_BUDGET: Duration = Duration::from_secs(300);

/// What the runner needs to know from the config.
#[derive(Clone, Copy, Debug)]
pub struct RunnerSettings {
    /// The bound on one job (`VIRTUALMIN_API_BULK_TIMEOUT`).
    pub job_timeout: Duration,
    /// A claim's lease.
    pub lease_duration: Duration,
    /// How often an idle runner looks for jobs.
    pub poll_interval: Duration,
    /// How often a backup is polled.
    pub backup_poll_interval: Duration,
}

/// Change notifications for WatchJob: bumped whenever a job or target changes
/// in this process. Watchers of jobs run elsewhere also poll.
#[derive(Clone, Debug)]
pub struct JobEvents {
    changed: Arc<watch::Sender<u64>>,
}

impl Default for JobEvents {
    fn default() -> Self {
        Self { changed: Arc::new(watch::Sender::new(0)) }
    }
}

impl JobEvents {
    /// Tells every watcher something changed.
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes on the next change.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Claims and runs jobs. Clones share the running set.
#[derive(Clone, Debug)]
pub struct JobRunner {
    store: JobStore,
    virtualmin: Virtualmin,
    settings: RunnerSettings,
    /// This replica's lease owner name.
    owner: String,
    events: JobEvents,
    /// Wakes the claim loop at once when a job was created here.
    wake: Arc<Notify>,
    /// The stop token of each job running here, for CancelJob.
    running: Arc<Mutex<HashMap<String, Arc<JobControl>>>>,
}

/// Why a job stopped issuing new targets.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StopCause {
    /// An ATOMIC job's first failure.
    AtomicFailure,
    /// CancelJob.
    Cancelled,
    /// `VIRTUALMIN_API_BULK_TIMEOUT` ran out.
    Timeout,
    /// The lease was lost (another replica owns the job now).
    LeaseLost,
    /// The process is shutting down; the job resumes later.
    Shutdown,
}

/// One running job's stop switch.
#[derive(Debug, Default)]
struct JobControl {
    stop: CancellationToken,
    cause: Mutex<Option<StopCause>>,
}

impl JobControl {
    fn stop(&self, cause: StopCause) {
        let mut slot = self.cause.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(cause);
        }
        self.stop.cancel();
    }

    fn cause(&self) -> Option<StopCause> {
        self.cause.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// One server's health probe, made once per job: its latency, or why it is unhealthy.
type ServerProbe = OnceCell<Result<Duration, Failure>>;

/// A job being run, with what its targets share.
struct RunningJob {
    id: String,
    kind: OperationKind,
    mode: BulkMode,
    concurrency: usize,
    suspend_reason: String,
    backup_directory: String,
    correlation_id: CorrelationId,
    deadline: Instant,
    control: Arc<JobControl>,
    /// The next outcome number; held while an outcome is written.
    next_seq: tokio::sync::Mutex<i64>,
    /// HEALTH_CHECK: one probe per server per job.
    server_health: Mutex<HashMap<String, Arc<ServerProbe>>>,
}

impl JobRunner {
    /// A runner named `owner` (unique per replica).
    #[must_use]
    pub fn new(store: JobStore, virtualmin: Virtualmin, settings: RunnerSettings, owner: String) -> Self {
        Self {
            store,
            virtualmin,
            settings,
            owner,
            events: JobEvents::default(),
            wake: Arc::new(Notify::new()),
            running: Arc::default(),
        }
    }

    /// The change notifications of this runner's jobs.
    #[must_use]
    pub fn events(&self) -> &JobEvents {
        &self.events
    }

    /// Looks for work now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops the job at once if it runs here (otherwise its runner sees the
    /// stored request at its next lease renewal).
    pub fn cancel_local(&self, job_id: &str) {
        let control = self.running.lock().unwrap_or_else(PoisonError::into_inner).get(job_id).cloned();
        if let Some(control) = control {
            control.stop(StopCause::Cancelled);
        }
    }

    /// Claims and runs jobs until `shutdown`; then stops issuing, waits for
    /// calls in flight and gives the leases up.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut jobs = JoinSet::new();
        loop {
            loop {
                match self.store.claim_job(&self.owner, self.settings.lease_duration).await {
                    // Its lease lapsed while it runs here (a slow renewal): the claim
                    // renewed it; a second runner of the same job must not start.
                    Ok(Some(job))
                        if self.running.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&job.id) =>
                    {
                        debug!(job_id = job.id, "re-claimed a job that runs here; lease renewed");
                    }
                    Ok(Some(job)) => {
                        // Registered before the task starts, so the next claim sees it.
                        let control = Arc::new(JobControl::default());
                        self.running
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(job.id.clone(), control.clone());
                        let runner = self.clone();
                        let span = info_span!("bulk_job", job_id = %job.id, correlation_id = %job.correlation_id);
                        jobs.spawn(runner.run_claimed(job, control, shutdown.clone()).instrument(span));
                    }
                    Ok(None) => break,
                    Err(error) => {
                        warn!(%error, "cannot claim jobs; trying again at the next poll");
                        break;
                    }
                }
            }
            while jobs.try_join_next().is_some() {}
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                () = self.wake.notified() => {}
            }
        }
        while jobs.join_next().await.is_some() {}
    }

    async fn run_claimed(self, job: JobRow, control: Arc<JobControl>, shutdown: CancellationToken) {
        let id = job.id.clone();
        let heartbeat = tokio::spawn(self.clone().heartbeat(id.clone(), control.clone(), shutdown));
        if let Err(error) = self.drive(job, control).await {
            warn!(%error, "job interrupted by a database error; it resumes when its lease lapses");
        }
        heartbeat.abort();
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
        self.events.bump();
    }

    /// Renews the lease a third of the way through it; turns a stored cancel,
    /// a lost lease and shutdown into the job's stop.
    async fn heartbeat(self, id: String, control: Arc<JobControl>, shutdown: CancellationToken) {
        let period = self.settings.lease_duration / 3;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    control.stop(StopCause::Shutdown);
                    return;
                }
                () = tokio::time::sleep(period) => {}
            }
            match self.store.renew_lease(&id, &self.owner, self.settings.lease_duration).await {
                Ok(None) => {
                    warn!("lease lost; another replica runs the job now");
                    control.stop(StopCause::LeaseLost);
                    return;
                }
                Ok(Some(true)) => control.stop(StopCause::Cancelled),
                Ok(Some(false)) => {}
                Err(error) => debug!(%error, "lease renewal failed; retrying"),
            }
        }
    }

    #[allow(clippy::too_many_lines)] // the job's life, in the order it happens
    async fn drive(&self, job: JobRow, control: Arc<JobControl>) -> Result<(), sea_orm::DbErr> {
        let Some(running) = self.prepare(&job, control.clone()).await? else {
            return Ok(());
        };
        let running = Arc::new(running);
        let mut state = JobState::parse(&job.state).unwrap_or(JobState::Running);
        if job.cancel_requested {
            control.stop(StopCause::Cancelled);
        }
        let timer = {
            let control = control.clone();
            let deadline = running.deadline;
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                control.stop(StopCause::Timeout);
            })
        };
        let context =
            CallContext { correlation_id: running.correlation_id.clone(), deadline: Some(running.deadline.into_std()) };
        if state == JobState::Pending {
            self.store.set_job_state(&running.id, JobState::Running).await?;
            state = JobState::Running;
            self.events.bump();
        }
        if state == JobState::Running {
            correlation::scope(context.clone(), self.resolve_issued(&running)).await?;
            correlation::scope(context.clone(), self.execute(&running)).await?;
        }
        timer.abort();
        let cause = control.cause();
        if matches!(cause, Some(StopCause::LeaseLost | StopCause::Shutdown)) {
            if cause == Some(StopCause::Shutdown) {
                self.store.release_lease(&running.id, &self.owner).await?;
            }
            info!(?cause, "job paused; it resumes from its stored state");
            return Ok(());
        }
        if let Some(cause) = &cause {
            let seq = running.take_seq().await;
            let skipped = self.store.skip_pending(&running.id, *seq).await?;
            drop(seq);
            debug!(?cause, skipped, "job stopped early");
            if let Some(failure) = stop_failure(cause) {
                self.store.set_stop_reason(&running.id, &failure).await?;
            }
        }
        let counts = self.store.counts(&running.id).await.map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
        let rollback = running.mode == BulkMode::Atomic
            && (state == JobState::Compensating
                || counts.failed > 0
                || matches!(cause, Some(StopCause::Cancelled | StopCause::Timeout)));
        if rollback {
            if state != JobState::Compensating {
                self.store.set_job_state(&running.id, JobState::Compensating).await?;
                self.events.bump();
            }
            let cleanup = CallContext {
                correlation_id: running.correlation_id.clone(),
                deadline: Some((Instant::now() + CLEANUP_BUDGET).into_std()),
            };
            correlation::scope(cleanup, self.compensate(&running)).await?;
        }
        let counts = self.store.counts(&running.id).await.map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
        let final_state = if cause == Some(StopCause::Cancelled) {
            JobState::Cancelled
        } else if rollback {
            if counts.compensation_failed == 0 { JobState::Compensated } else { JobState::Failed }
        } else if counts.failed > 0 || cause == Some(StopCause::Timeout) {
            JobState::Failed
        } else {
            JobState::Succeeded
        };
        self.store.finish_job(&running.id, &JobEnd { state: final_state, rollback_performed: rollback }).await?;
        info!(state = final_state.as_str(), succeeded = counts.successful(), failed = counts.failed, "job finished");
        self.events.bump();
        Ok(())
    }

    /// The job's shared state; `None` (after finishing it as failed) when its row cannot be read.
    async fn prepare(&self, job: &JobRow, control: Arc<JobControl>) -> Result<Option<RunningJob>, sea_orm::DbErr> {
        let (Some(kind), Some(mode)) = (OperationKind::parse(&job.kind), BulkMode::parse(&job.mode)) else {
            warn!(kind = job.kind, mode = job.mode, "job row names an unknown kind or mode; failing it");
            self.store.finish_job(&job.id, &JobEnd { state: JobState::Failed, rollback_performed: false }).await?;
            return Ok(None);
        };
        // The bound runs from the job's first start, across restarts.
        let started_at = job.started_at_micros.unwrap_or_else(now_micros);
        let elapsed = Duration::from_micros(u64::try_from(now_micros().saturating_sub(started_at)).unwrap_or(0));
        let deadline = Instant::now() + self.settings.job_timeout.saturating_sub(elapsed);
        let next_seq = self.store.max_finish_seq(&job.id).await? + 1;
        Ok(Some(RunningJob {
            id: job.id.clone(),
            kind,
            mode,
            concurrency: usize::try_from(job.max_concurrency.max(1)).unwrap_or(1),
            suspend_reason: job.suspend_reason.clone(),
            backup_directory: job.backup_directory.clone(),
            correlation_id: CorrelationId::parse(&job.correlation_id).unwrap_or_else(CorrelationId::mint),
            deadline,
            control,
            next_seq: tokio::sync::Mutex::new(next_seq),
            server_health: Mutex::default(),
        }))
    }

    /// Settles targets that were in flight when the previous runner stopped,
    /// by reading their state back from Virtualmin.
    async fn resolve_issued(&self, job: &RunningJob) -> Result<(), sea_orm::DbErr> {
        let issued = self.store.targets_in(&job.id, TargetState::Issued).await?;
        if !issued.is_empty() {
            info!(count = issued.len(), "settling targets that were in flight before a restart");
        }
        for target in issued {
            let index = target.idx;
            let settled = match job.kind {
                OperationKind::Suspend | OperationKind::Activate => {
                    let want = DomainState::wanted_by(job.kind);
                    let read = patiently(job.deadline, &job.control.stop, || {
                        self.virtualmin.is_suspended(&target.server_id, &target.domain_name)
                    })
                    .await;
                    match read {
                        // Stopped while waiting for the rate limit: the next run settles it.
                        None => continue,
                        // In the wanted state: done. It counts as a change to undo only if
                        // the job found it otherwise before acting.
                        Some(Ok(suspended)) if Some(DomainState::of(suspended)) == want => {
                            let prior = DomainState::parse(&target.prior_state);
                            let changed = prior.is_none_or(|prior| Some(prior) != want);
                            let detail = if changed {
                                format!("{} (found so after a restart)", done_word(job.kind))
                            } else {
                                format!("already {} before the job (found so after a restart)", done_word(job.kind))
                            };
                            Some(Outcome::Succeeded { changed, detail })
                        }
                        // It never took effect: it may be issued again.
                        Some(Ok(_)) => None,
                        Some(Err(failure)) => Some(Outcome::Failed(failure)),
                    }
                }
                OperationKind::Backup if !target.operation_id.is_empty() => {
                    Some(self.await_backup(job, &target.operation_id, &backup_path(job, &target)).await)
                }
                // The answer to BackupDomain was lost: ask again under the same key,
                // which VirtualminGateway answers with the backup already started.
                OperationKind::Backup => match self.backup(job, &target).await {
                    Some(outcome) => Some(outcome),
                    None => continue,
                },
                // Read-only: asking again is harmless.
                OperationKind::HealthCheck => None,
            };
            match settled {
                Some(outcome) => self.record(job, index, &outcome).await?,
                None => self.store.reset_to_pending(&job.id, index).await?,
            }
        }
        Ok(())
    }

    /// Acts on every pending target, at most `concurrency` at once, until done or stopped.
    async fn execute(&self, job: &Arc<RunningJob>) -> Result<(), sea_orm::DbErr> {
        let pending = self.store.targets_in(&job.id, TargetState::Pending).await?;
        let results: Vec<Result<(), sea_orm::DbErr>> = futures_util::stream::iter(pending)
            .map(|target| self.process(job, target))
            .buffer_unordered(job.concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn process(&self, job: &Arc<RunningJob>, target: TargetRow) -> Result<(), sea_orm::DbErr> {
        // A stopped job starts nothing new; what stays pending is skipped (or resumed) later.
        if job.control.stop.is_cancelled() {
            return Ok(());
        }
        // SUSPEND and ACTIVATE: what the domain was before, persisted with `issued`.
        let prior = if DomainState::wanted_by(job.kind).is_some() {
            let read = patiently(job.deadline, &job.control.stop, || {
                self.virtualmin.is_suspended(&target.server_id, &target.domain_name)
            })
            .await;
            match read {
                None => return Ok(()),
                Some(Ok(suspended)) => Some(DomainState::of(suspended)),
                // Nothing was done to the domain; the target fails as it is.
                Some(Err(failure)) => return self.settle(job, target.idx, Outcome::Failed(failure)).await,
            }
        } else {
            None
        };
        self.store.mark_issued(&job.id, target.idx, prior).await?;
        match self.act(job, &target, prior).await {
            Some(outcome) => self.settle(job, target.idx, outcome).await,
            // Stopped while a rate limit held it back: nothing was done.
            None => self.store.reset_to_pending(&job.id, target.idx).await,
        }
    }

    /// Records a target's outcome; an ATOMIC job stops at its first failure.
    async fn settle(&self, job: &RunningJob, index: i32, outcome: Outcome) -> Result<(), sea_orm::DbErr> {
        if matches!(outcome, Outcome::Failed(_)) && job.mode == BulkMode::Atomic {
            job.control.stop(StopCause::AtomicFailure);
        }
        self.record(job, index, &outcome).await
    }

    /// The operation on one target; `None` when the job stopped while a rate
    /// limit held the call back (nothing was done).
    async fn act(&self, job: &RunningJob, target: &TargetRow, prior: Option<DomainState>) -> Option<Outcome> {
        let (server, domain) = (target.server_id.as_str(), target.domain_name.as_str());
        Some(match job.kind {
            OperationKind::Suspend | OperationKind::Activate => {
                let suspend = job.kind == OperationKind::Suspend;
                let call = || async {
                    if suspend {
                        self.virtualmin.suspend(server, domain, &job.suspend_reason).await
                    } else {
                        self.virtualmin.unsuspend(server, domain).await
                    }
                };
                let want = DomainState::wanted_by(job.kind);
                match patiently(job.deadline, &job.control.stop, call).await? {
                    Ok(already) => {
                        // The state read before the call decides; Virtualmin's "already"
                        // answers only when that read is missing.
                        let changed = prior.map_or(!already, |prior| Some(prior) != want);
                        let detail = if changed {
                            done_word(job.kind).to_owned()
                        } else {
                            format!("already {}", done_word(job.kind))
                        };
                        Outcome::Succeeded { changed, detail }
                    }
                    Err(failure) if outcome_unknown(&failure) => self.read_back(job, target, prior, failure).await,
                    Err(failure) => Outcome::Failed(failure),
                }
            }
            OperationKind::Backup => return self.backup(job, target).await,
            OperationKind::HealthCheck => return self.health_check(job, server, domain).await,
        })
    }

    /// Starts (or, after a lost answer, finds again through its idempotency
    /// key) the target's backup and waits for it. An attempt the rate limit
    /// refused did nothing: the next attempt, under the next key, follows the
    /// advised delay. `None` when the job stopped during such a wait.
    async fn backup(&self, job: &RunningJob, target: &TargetRow) -> Option<Outcome> {
        let (server, domain) = (target.server_id.as_str(), target.domain_name.as_str());
        let path = backup_path(job, target);
        let mut attempt = target.attempt;
        loop {
            let key = backup_key(&job.id, target.idx, attempt);
            let started = patiently(job.deadline, &job.control.stop, || {
                self.virtualmin.start_backup(server, domain, &path, &key)
            })
            .await?;
            let operation_id = match started {
                Ok(operation_id) => operation_id,
                Err(failure) => return Some(Outcome::Failed(failure)),
            };
            if let Err(error) = self.store.set_operation_id(&job.id, target.idx, &operation_id).await {
                warn!(%error, "cannot persist the backup's operation id; a restart finds it again by its key");
            }
            let outcome = self.await_backup(job, &operation_id, &path).await;
            let Outcome::Failed(failure) = &outcome else { return Some(outcome) };
            // Refused by the rate limit inside the operation: backup-domain never ran.
            let Some(delay) = failure.rate_limited_for() else { return Some(outcome) };
            if Instant::now() + delay >= job.deadline {
                return Some(outcome);
            }
            attempt += 1;
            if let Err(error) = self.store.set_attempt(&job.id, target.idx, attempt).await {
                warn!(%error, "cannot persist the backup's next attempt; recording the rate-limited one");
                return Some(outcome);
            }
            debug!(attempt, delay_ms = delay.as_millis(), "backup refused by the rate limit; waiting");
            tokio::select! {
                () = job.control.stop.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// After an answer was lost, reads the domain's state back instead of
    /// guessing (or acting twice).
    async fn read_back(
        &self,
        job: &RunningJob,
        target: &TargetRow,
        prior: Option<DomainState>,
        failure: Failure,
    ) -> Outcome {
        let budget = Instant::now() + CLEANUP_BUDGET.min(Duration::from_secs(30));
        let want = DomainState::wanted_by(job.kind);
        let read = patiently(budget, &CancellationToken::new(), || {
            self.virtualmin.is_suspended(&target.server_id, &target.domain_name)
        })
        .await;
        match read {
            Some(Ok(suspended)) if Some(DomainState::of(suspended)) == want => Outcome::Succeeded {
                changed: prior.is_none_or(|prior| Some(prior) != want),
                detail: format!("{} (read back after: {})", done_word(job.kind), failure.message),
            },
            _ => Outcome::Failed(failure),
        }
    }

    async fn await_backup(&self, job: &RunningJob, operation_id: &str, path: &str) -> Outcome {
        loop {
            match within(job.deadline, self.virtualmin.backup_progress(operation_id)).await {
                Ok(BackupProgress::Succeeded) => {
                    return Outcome::Succeeded { changed: true, detail: format!("archive at {path}") };
                }
                Ok(BackupProgress::Failed(failure)) | Err(failure) => return Outcome::Failed(failure),
                Ok(BackupProgress::Running) => {}
            }
            tokio::time::sleep(self.settings.backup_poll_interval).await;
        }
    }

    async fn health_check(&self, job: &RunningJob, server: &str, domain: &str) -> Option<Outcome> {
        let cell = job
            .server_health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(server.to_owned())
            .or_default()
            .clone();
        // One probe per server and job, whoever waits for it; a rate limit is waited out
        // within the job's time (the stop token is not used: the probe is shared).
        let server_health = cell
            .get_or_init(|| async {
                patiently(job.deadline, &CancellationToken::new(), || self.virtualmin.check_server(server))
                    .await
                    .unwrap_or_else(|| Err(own_failure(Code::Cancelled, "STOPPED", "the job stopped")))
            })
            .await;
        let latency = match server_health {
            Ok(latency) => *latency,
            Err(failure) => return Some(Outcome::Failed(failure.clone())),
        };
        Some(
            match patiently(job.deadline, &job.control.stop, || self.virtualmin.is_suspended(server, domain)).await? {
                Ok(suspended) => Outcome::Succeeded {
                    changed: false,
                    detail: format!(
                        "server healthy ({} ms probe); domain {}",
                        latency.as_millis(),
                        if suspended { "suspended" } else { "active" }
                    ),
                },
                Err(failure) => Outcome::Failed(failure),
            },
        )
    }

    /// Undoes every completed target that changed its domain.
    async fn compensate(&self, job: &Arc<RunningJob>) -> Result<(), sea_orm::DbErr> {
        // Only what this job changed; never a domain the job found already as it wanted it.
        let want = DomainState::wanted_by(job.kind);
        let done: Vec<TargetRow> = self
            .store
            .targets_in(&job.id, TargetState::Succeeded)
            .await?
            .into_iter()
            .filter(|t| t.changed && (want.is_none() || DomainState::parse(&t.prior_state) != want))
            .collect();
        info!(count = done.len(), "undoing completed targets");
        let results: Vec<Result<(), sea_orm::DbErr>> = futures_util::stream::iter(done)
            .map(|target| self.undo(job, target))
            .buffer_unordered(job.concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn undo(&self, job: &RunningJob, target: TargetRow) -> Result<(), sea_orm::DbErr> {
        let (server, domain) = (target.server_id.as_str(), target.domain_name.as_str());
        let budget = Instant::now() + CLEANUP_BUDGET;
        let failure = match job.kind {
            OperationKind::Suspend | OperationKind::Activate => {
                // Undo of a suspend is an activate, and the other way round: the
                // prior state recorded before the job acted.
                let want_suspended = job.kind == OperationKind::Activate;
                let never = CancellationToken::new();
                let read = || self.virtualmin.is_suspended(server, domain);
                if target.compensation_issued && patiently(budget, &never, read).await == Some(Ok(want_suspended)) {
                    // Issued before a restart and it took effect.
                    None
                } else {
                    self.store.mark_compensation_issued(&job.id, target.idx).await?;
                    let call = || async {
                        if want_suspended {
                            self.virtualmin.suspend(server, domain, "bulk job rolled back").await
                        } else {
                            self.virtualmin.unsuspend(server, domain).await
                        }
                    };
                    patiently(budget, &never, call).await.and_then(Result::err)
                }
            }
            OperationKind::Backup => Some(own_failure(
                Code::FailedPrecondition,
                "BACKUP_NOT_REMOVABLE",
                format!(
                    "the archive at {} was left in place: Virtualmin's remote API has no program that deletes a \
                     backup (backup-domain only writes one) and VirtualminGateway has no call that deletes a file",
                    backup_path(job, &target)
                ),
            )),
            // Read-only: `changed` is never set, so this is not reached.
            OperationKind::HealthCheck => None,
        };
        let seq = job.take_seq().await;
        self.store.record_compensation(&job.id, target.idx, failure.as_ref(), *seq).await?;
        drop(seq);
        self.events.bump();
        Ok(())
    }

    async fn record(&self, job: &RunningJob, index: i32, outcome: &Outcome) -> Result<(), sea_orm::DbErr> {
        let seq = job.take_seq().await;
        self.store.record_outcome(&job.id, index, outcome, *seq).await?;
        drop(seq);
        self.events.bump();
        Ok(())
    }
}

impl RunningJob {
    /// Takes the next outcome number; the guard is held until the outcome is written.
    async fn take_seq(&self) -> SeqGuard<'_> {
        let mut guard = self.next_seq.lock().await;
        let seq = *guard;
        *guard += 1;
        SeqGuard { _guard: guard, seq }
    }
}

/// An outcome number, with the lock that keeps commits in number order.
struct SeqGuard<'a> {
    _guard: tokio::sync::MutexGuard<'a, i64>,
    seq: i64,
}

impl std::ops::Deref for SeqGuard<'_> {
    type Target = i64;

    fn deref(&self) -> &i64 {
        &self.seq
    }
}

fn done_word(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Suspend => "suspended",
        OperationKind::Activate => "active",
        OperationKind::Backup => "backed up",
        OperationKind::HealthCheck => "checked",
    }
}

/// Runs `call` until it is not refused by a rate limit: after a
/// RESOURCE_EXHAUSTED with `RetryInfo` (nothing was done), waits the advised
/// delay and calls again, while the delay ends before `deadline`; past that,
/// the refusal is the answer. `None` when `stop` fires during a wait.
async fn patiently<T, F, Fut>(deadline: Instant, stop: &CancellationToken, mut call: F) -> Option<Result<T, Failure>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    loop {
        let failure = match within(deadline, call()).await {
            Err(failure) => failure,
            done => return Some(done),
        };
        let Some(delay) = failure.rate_limited_for() else { return Some(Err(failure)) };
        if Instant::now() + delay >= deadline {
            return Some(Err(failure));
        }
        debug!(reason = failure.reason, delay_ms = delay.as_millis(), "refused by a rate limit; waiting");
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The idempotency key of a target's backup attempt: stable across retries
/// and restarts, different per job, target and attempt; at most 128
/// printable characters (a UUID job id keeps it near 60).
#[must_use]
pub fn backup_key(job_id: &str, index: i32, attempt: i32) -> String {
    format!("bulkops-{job_id}-{index}-backup-{attempt}")
}

/// Where a target's backup goes: `<directory>/<domain>.tar.gz`.
fn backup_path(job: &RunningJob, target: &TargetRow) -> String {
    format!("{}/{}.tar.gz", job.backup_directory.trim_end_matches('/'), target.domain_name)
}

/// The job's stop reason, as recorded on the job.
fn stop_failure(cause: &StopCause) -> Option<Failure> {
    match cause {
        StopCause::AtomicFailure => Some(own_failure(
            Code::Aborted,
            "ATOMIC_FAILURE",
            "a target failed in an ATOMIC job; no new target was started",
        )),
        StopCause::Cancelled => Some(own_failure(Code::Cancelled, "CANCELLED", "the job was cancelled")),
        StopCause::Timeout => Some(own_failure(
            Code::DeadlineExceeded,
            "JOB_TIMEOUT",
            "the job's time (VIRTUALMIN_API_BULK_TIMEOUT) ran out",
        )),
        StopCause::LeaseLost | StopCause::Shutdown => None,
    }
}
