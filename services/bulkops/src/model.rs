//! The domain of a bulk job, without tonic, proto or SQL: what a job does
//! ([`OperationKind`], [`BulkMode`]), where it and each target stand
//! ([`JobState`], [`TargetState`]), and the aggregate an operator reads
//! ([`BulkOutcome`]). States are stored as the short lowercase words of
//! `as_str`.

use std::time::Duration;

/// What a job does to each target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationKind {
    /// Suspend (disable-domain); undone by activating.
    Suspend,
    /// Activate (enable-domain); undone by suspending.
    Activate,
    /// Back up to a file on the domain's server; cannot be undone through Virtualmin's API.
    Backup,
    /// Check the server's health and that it hosts the domain; nothing to undo.
    HealthCheck,
}

/// How a job treats a failing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BulkMode {
    /// Stop at the first failure and undo every completed target.
    Atomic,
    /// Try every target and aggregate.
    BestEffort,
}

/// Where a job stands. `Pending → Running → (Compensating →) a final state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Persisted, not yet claimed by a replica.
    Pending,
    /// Acting on targets.
    Running,
    /// An ATOMIC job undoing its completed targets.
    Compensating,
    /// Every target succeeded.
    Succeeded,
    /// Some target failed (or an undo did).
    Failed,
    /// An ATOMIC job failed and was fully undone.
    Compensated,
    /// Stopped by a cancel.
    Cancelled,
}

/// Where one target stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetState {
    /// Not started.
    Pending,
    /// The call was issued; its outcome is not recorded yet. After a crash
    /// the outcome is found by asking Virtualmin, never by acting again.
    Issued,
    /// Succeeded.
    Succeeded,
    /// Failed.
    Failed,
    /// Never started: the job stopped first.
    Skipped,
    /// Succeeded, then undone.
    Compensated,
    /// Succeeded; undoing it failed or was not possible.
    CompensationFailed,
}

macro_rules! words {
    ($type:ty { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $type {
            /// The stored word.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }

            /// The value of a stored word.
            #[must_use]
            pub fn parse(word: &str) -> Option<Self> {
                match word { $($word => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

words!(OperationKind { Suspend => "suspend", Activate => "activate", Backup => "backup", HealthCheck => "health_check" });
words!(DomainState { Active => "active", Suspended => "suspended" });
words!(BulkMode { Atomic => "atomic", BestEffort => "best_effort" });
words!(JobState {
    Pending => "pending",
    Running => "running",
    Compensating => "compensating",
    Succeeded => "succeeded",
    Failed => "failed",
    Compensated => "compensated",
    Cancelled => "cancelled",
});
words!(TargetState {
    Pending => "pending",
    Issued => "issued",
    Succeeded => "succeeded",
    Failed => "failed",
    Skipped => "skipped",
    Compensated => "compensated",
    CompensationFailed => "compensation_failed",
});

impl JobState {
    /// Whether the job will not change any more.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Compensated | Self::Cancelled)
    }

    /// The states a replica may claim a job in.
    pub const CLAIMABLE: [Self; 3] = [Self::Pending, Self::Running, Self::Compensating];
}

/// One domain on one configured Virtualmin server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The server id of VirtualminGateway's configuration.
    pub server_id: String,
    /// The domain name.
    pub domain_name: String,
}

/// A failure as recorded: the gRPC code, the `ErrorInfo` reason and domain, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The numeric gRPC code.
    pub code: i32,
    /// The `ErrorInfo` reason, e.g. `DOMAIN_NOT_FOUND`.
    pub reason: String,
    /// The `ErrorInfo` domain that gave the reason, e.g. `mesh.virtualmin.v1`.
    pub domain: String,
    /// The message.
    pub message: String,
    /// The delay VirtualminGateway advised (`google.rpc.RetryInfo`) when it
    /// refused with RESOURCE_EXHAUSTED: nothing was done, and the same call
    /// may be made again after it. Not stored.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// The advised delay when this is a refusal to act for now (RESOURCE_EXHAUSTED
    /// with `RetryInfo`, e.g. VirtualminGateway's per-server rate limit).
    #[must_use]
    pub fn rate_limited_for(&self) -> Option<Duration> {
        self.retry_after.filter(|_| self.code == tonic_code::RESOURCE_EXHAUSTED)
    }
}

/// gRPC code numbers this module needs, without depending on tonic.
mod tonic_code {
    /// `RESOURCE_EXHAUSTED`.
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
}

/// A domain's suspension state as read before a SUSPEND or ACTIVATE acted on
/// it (stored on the target), so recovery and undo know what the job changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainState {
    /// Enabled.
    Active,
    /// Disabled.
    Suspended,
}

impl DomainState {
    /// The state of a domain that is (or is not) suspended.
    #[must_use]
    pub fn of(suspended: bool) -> Self {
        if suspended { Self::Suspended } else { Self::Active }
    }

    /// The state a SUSPEND or ACTIVATE job puts a domain in; `None` for other kinds.
    #[must_use]
    pub fn wanted_by(kind: OperationKind) -> Option<Self> {
        match kind {
            OperationKind::Suspend => Some(Self::Suspended),
            OperationKind::Activate => Some(Self::Active),
            OperationKind::Backup | OperationKind::HealthCheck => None,
        }
    }
}

/// Counts of a job's targets by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetCounts {
    /// Every target.
    pub total: u32,
    /// Not started.
    pub pending: u32,
    /// Issued, outcome not recorded.
    pub in_flight: u32,
    /// Succeeded and not undone.
    pub succeeded: u32,
    /// Failed.
    pub failed: u32,
    /// Never started.
    pub skipped: u32,
    /// Succeeded, then undone.
    pub compensated: u32,
    /// Succeeded; undo failed or impossible.
    pub compensation_failed: u32,
}

impl TargetCounts {
    /// Adds `count` targets in `state`.
    pub fn add(&mut self, state: TargetState, count: u32) {
        self.total += count;
        let slot = match state {
            TargetState::Pending => &mut self.pending,
            TargetState::Issued => &mut self.in_flight,
            TargetState::Succeeded => &mut self.succeeded,
            TargetState::Failed => &mut self.failed,
            TargetState::Skipped => &mut self.skipped,
            TargetState::Compensated => &mut self.compensated,
            TargetState::CompensationFailed => &mut self.compensation_failed,
        };
        *slot += count;
    }

    /// Targets whose operation reached an outcome (succeeded, failed, or undone after succeeding).
    #[must_use]
    pub fn processed(&self) -> u32 {
        self.successful() + self.failed
    }

    /// Targets whose operation succeeded, including those undone since.
    #[must_use]
    pub fn successful(&self) -> u32 {
        self.succeeded + self.compensated + self.compensation_failed
    }

    /// Targets not yet at an outcome.
    #[must_use]
    pub fn remaining(&self) -> u32 {
        self.pending + self.in_flight
    }
}

/// The seed's BulkOperationResult, without the per-target errors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BulkOutcome {
    /// Targets that reached an outcome.
    pub total_processed: u32,
    /// Targets that succeeded.
    pub successful_count: u32,
    /// Targets that failed.
    pub failed_count: u32,
    /// Whether completed targets were undone.
    pub rollback_performed: bool,
    /// Start to end.
    pub processing_time: Duration,
    /// `successful / processed`; 0 when nothing was processed.
    pub success_rate: f64,
}

impl BulkOutcome {
    /// The outcome of a job with `counts`.
    #[must_use]
    pub fn from_counts(counts: &TargetCounts, rollback_performed: bool, processing_time: Duration) -> Self {
        let total_processed = counts.processed();
        let successful_count = counts.successful();
        // 0 targets processed is a rate of 0, never a division by zero.
        let success_rate =
            if total_processed == 0 { 0.0 } else { f64::from(successful_count) / f64::from(total_processed) };
        Self {
            total_processed,
            successful_count,
            failed_count: counts.failed,
            rollback_performed,
            processing_time,
            success_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for state in [
            TargetState::Pending,
            TargetState::Issued,
            TargetState::Succeeded,
            TargetState::Failed,
            TargetState::Skipped,
            TargetState::Compensated,
            TargetState::CompensationFailed,
        ] {
            assert_eq!(TargetState::parse(state.as_str()), Some(state));
        }
        assert_eq!(OperationKind::parse("health_check"), Some(OperationKind::HealthCheck));
        assert_eq!(JobState::parse("nope"), None);
    }

    #[test]
    fn success_rate_of_nothing_is_zero() {
        let outcome = BulkOutcome::from_counts(&TargetCounts::default(), false, Duration::ZERO);
        assert_eq!(outcome.total_processed, 0);
        assert!(outcome.success_rate.abs() < f64::EPSILON);
    }

    #[test]
    fn success_rate_counts_undone_targets_as_successful() {
        let mut counts = TargetCounts::default();
        counts.add(TargetState::Compensated, 3);
        counts.add(TargetState::Failed, 1);
        counts.add(TargetState::Skipped, 6);
        let outcome = BulkOutcome::from_counts(&counts, true, Duration::from_secs(1));
        assert_eq!((outcome.total_processed, outcome.successful_count, outcome.failed_count), (4, 3, 1));
        assert!((outcome.success_rate - 0.75).abs() < 1e-12);
        assert_eq!(counts.total, 10);
    }
}
