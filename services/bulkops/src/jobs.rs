//! `Jobs`: the operations behind the RPCs, in domain terms: validate and
//! start a job (resolving a selector through VirtualminGateway), and read,
//! list and cancel jobs. Plain Rust over the store, the runner and the
//! Virtualmin client; `grpc` converts to and from the wire.

use std::collections::HashSet;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::error::BulkOpsError;
use crate::model::{BulkMode, JobState, OperationKind, Target};
use crate::runner::JobRunner;
use crate::store::{Created, JobRow, JobStore, NewJob};
use crate::virtualmin::Virtualmin;

/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
/// Longest domain name (DNS).
const MAX_DOMAIN_NAME_BYTES: usize = 253;

/// Which domains a job covers, as the caller gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSet {
    /// Explicit pairs.
    List(Vec<Target>),
    /// The domains of a server that match.
    Selector(Selector),
}

/// A server's domains, filtered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// The server id.
    pub server_id: String,
    /// Owner filter; empty for any.
    pub owner_username: String,
    /// Plan filter; empty for any.
    pub plan: String,
    /// Case-insensitive substring of the name; empty for any.
    pub name_contains: String,
    /// Only suspended (true) or active (false) domains.
    pub suspended: Option<bool>,
}

/// A StartBulkOperation request in domain terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRequest {
    /// What to do; `None` when unset or unknown.
    pub kind: Option<OperationKind>,
    /// Which domains; `None` when unset.
    pub targets: Option<TargetSet>,
    /// ATOMIC or BEST_EFFORT.
    pub mode: BulkMode,
    /// 0 for the default.
    pub max_concurrency: u32,
    /// Empty for none.
    pub idempotency_key: String,
    /// SUSPEND's reason.
    pub suspend_reason: String,
    /// BACKUP's directory.
    pub backup_directory: String,
    /// The starting call's correlation id.
    pub correlation_id: String,
}

/// Limits on what a job may ask for.
#[derive(Clone, Copy, Debug)]
pub struct JobLimits {
    /// Highest `max_concurrency`.
    pub max_concurrency: u32,
    /// `max_concurrency` of a request that gives 0.
    pub default_concurrency: u32,
    /// Most targets.
    pub max_targets: usize,
}

/// The operations.
#[derive(Clone, Debug)]
pub struct Jobs {
    store: JobStore,
    virtualmin: Virtualmin,
    runner: JobRunner,
    limits: JobLimits,
}

impl Jobs {
    /// The operations over these parts.
    #[must_use]
    pub fn new(store: JobStore, virtualmin: Virtualmin, runner: JobRunner, limits: JobLimits) -> Self {
        Self { store, virtualmin, runner, limits }
    }

    /// The store, for reads.
    #[must_use]
    pub fn store(&self) -> &JobStore {
        &self.store
    }

    /// The runner, for its change notifications.
    #[must_use]
    pub fn runner(&self) -> &JobRunner {
        &self.runner
    }

    /// Validates, persists and schedules a job (or finds the one with the same idempotency key).
    pub async fn start(&self, request: StartRequest) -> Result<Created, BulkOpsError> {
        let kind = request.kind.ok_or(BulkOpsError::MissingKind)?;
        let target_set = request.targets.clone().ok_or(BulkOpsError::MissingTargets)?;
        let max_concurrency = match request.max_concurrency {
            0 => self.limits.default_concurrency,
            asked if asked > self.limits.max_concurrency => {
                return Err(BulkOpsError::ConcurrencyTooHigh { asked, max: self.limits.max_concurrency });
            }
            asked => asked,
        };
        if request.idempotency_key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS
            || request.idempotency_key.chars().any(char::is_control)
        {
            return Err(BulkOpsError::InvalidIdempotencyKey);
        }
        if kind == OperationKind::Backup
            && (!request.backup_directory.starts_with('/') || request.backup_directory.chars().any(char::is_control))
        {
            return Err(BulkOpsError::InvalidBackupDirectory);
        }
        let fingerprint = fingerprint(&request);
        let idempotency_key = Some(request.idempotency_key.clone()).filter(|key| !key.is_empty());
        // A retry with the same key answers from the store without asking Virtualmin again.
        if let Some(key) = &idempotency_key
            && let Some(found) = self.store.find_by_key(key).await?
        {
            return if found.request_fingerprint == fingerprint {
                Ok(Created::Existing(found))
            } else {
                Err(BulkOpsError::IdempotencyKeyReused { job_id: found.id })
            };
        }
        let targets = match target_set {
            TargetSet::List(targets) => {
                check_targets(&targets, self.limits.max_targets)?;
                if !targets.is_empty() {
                    self.check_servers(&targets).await?;
                }
                targets
            }
            TargetSet::Selector(selector) => self.resolve(&selector).await?,
        };
        let created = self
            .store
            .create_job(NewJob {
                kind,
                mode: request.mode,
                max_concurrency,
                idempotency_key,
                request_fingerprint: fingerprint,
                suspend_reason: request.suspend_reason,
                backup_directory: request.backup_directory,
                correlation_id: request.correlation_id,
                targets,
            })
            .await?;
        if matches!(created, Created::New(_)) {
            self.runner.wake();
        }
        Ok(created)
    }

    async fn check_servers(&self, targets: &[Target]) -> Result<(), BulkOpsError> {
        let known: HashSet<String> =
            self.virtualmin.server_ids().await.map_err(|s| BulkOpsError::from_virtualmin(&s))?.into_iter().collect();
        if let Some(unknown) = targets.iter().find(|target| !known.contains(&target.server_id)) {
            return Err(BulkOpsError::UnknownServer {
                field: "target_list.targets.server_id",
                server_id: unknown.server_id.clone(),
            });
        }
        Ok(())
    }

    async fn resolve(&self, selector: &Selector) -> Result<Vec<Target>, BulkOpsError> {
        if selector.server_id.is_empty() {
            return Err(BulkOpsError::InvalidTarget { field: "selector.server_id", reason: "is required".into() });
        }
        let known = self.virtualmin.server_ids().await.map_err(|s| BulkOpsError::from_virtualmin(&s))?;
        if !known.contains(&selector.server_id) {
            return Err(BulkOpsError::UnknownServer {
                field: "selector.server_id",
                server_id: selector.server_id.clone(),
            });
        }
        let names = self
            .virtualmin
            .list_domain_names(&selector.server_id, &selector.owner_username, &selector.plan, selector.suspended)
            .await
            .map_err(|s| BulkOpsError::from_virtualmin(&s))?;
        let needle = selector.name_contains.to_lowercase();
        let targets: Vec<Target> = names
            .into_iter()
            .filter(|(name, _)| needle.is_empty() || name.to_lowercase().contains(&needle))
            .map(|(domain_name, _)| Target { server_id: selector.server_id.clone(), domain_name })
            .collect();
        if targets.len() > self.limits.max_targets {
            return Err(BulkOpsError::TooManyTargets { count: targets.len(), max: self.limits.max_targets });
        }
        Ok(targets)
    }

    /// One job.
    pub async fn get(&self, job_id: &str) -> Result<JobRow, BulkOpsError> {
        check_job_id(job_id)?;
        self.store.job(job_id).await?.ok_or_else(|| BulkOpsError::JobNotFound { job_id: job_id.to_owned() })
    }

    /// Records a cancel and stops the job at once if it runs here.
    pub async fn cancel(&self, job_id: &str) -> Result<JobRow, BulkOpsError> {
        check_job_id(job_id)?;
        let job = self
            .store
            .request_cancel(job_id)
            .await?
            .ok_or_else(|| BulkOpsError::JobNotFound { job_id: job_id.to_owned() })?;
        if !JobState::parse(&job.state).is_some_and(JobState::is_final) {
            self.runner.cancel_local(job_id);
            self.runner.wake();
        }
        Ok(job)
    }
}

fn check_job_id(job_id: &str) -> Result<(), BulkOpsError> {
    uuid::Uuid::parse_str(job_id).map(drop).map_err(|_| BulkOpsError::InvalidJobId)
}

fn check_targets(targets: &[Target], max_targets: usize) -> Result<(), BulkOpsError> {
    if targets.len() > max_targets {
        return Err(BulkOpsError::TooManyTargets { count: targets.len(), max: max_targets });
    }
    let mut seen = HashSet::with_capacity(targets.len());
    for target in targets {
        if target.server_id.is_empty() || target.server_id.chars().any(char::is_control) {
            return Err(BulkOpsError::InvalidTarget {
                field: "target_list.targets.server_id",
                reason: "must be a configured server id".into(),
            });
        }
        let name = &target.domain_name;
        if name.is_empty() || name.len() > MAX_DOMAIN_NAME_BYTES || name.chars().any(|c| c.is_control() || c == ' ') {
            return Err(BulkOpsError::InvalidTarget {
                field: "target_list.targets.domain_name",
                reason: format!("{name:?} is not a domain name"),
            });
        }
        if !seen.insert((target.server_id.as_str(), name.to_ascii_lowercase())) {
            return Err(BulkOpsError::DuplicateTarget {
                server_id: target.server_id.clone(),
                domain_name: name.clone(),
            });
        }
    }
    Ok(())
}

/// SHA-256 over everything that defines the job except the correlation id,
/// so a retry matches and a different request under the same key does not.
fn fingerprint(request: &StartRequest) -> String {
    let mut hash = Sha256::new();
    let mut field = |value: &str| {
        hash.update(value.len().to_le_bytes());
        hash.update(value.as_bytes());
    };
    field(request.kind.map_or("", OperationKind::as_str));
    field(request.mode.as_str());
    field(&request.max_concurrency.to_string());
    field(&request.suspend_reason);
    field(&request.backup_directory);
    match &request.targets {
        None => field("none"),
        Some(TargetSet::List(targets)) => {
            field("list");
            for target in targets {
                field(&target.server_id);
                field(&target.domain_name);
            }
        }
        Some(TargetSet::Selector(selector)) => {
            field("selector");
            field(&selector.server_id);
            field(&selector.owner_username);
            field(&selector.plan);
            field(&selector.name_contains);
            field(match selector.suspended {
                None => "any",
                Some(true) => "suspended",
                Some(false) => "active",
            });
        }
    }
    hash.finalize().iter().fold(String::with_capacity(64), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(server: &str, domain: &str) -> Target {
        Target { server_id: server.into(), domain_name: domain.into() }
    }

    #[test]
    fn targets_are_checked() {
        assert!(check_targets(&[target("a", "x.com"), target("b", "x.com")], 10).is_ok());
        assert!(matches!(
            check_targets(&[target("a", "x.com"), target("a", "X.com")], 10),
            Err(BulkOpsError::DuplicateTarget { .. })
        ));
        assert!(matches!(check_targets(&[target("a", "x\n.com")], 10), Err(BulkOpsError::InvalidTarget { .. })));
        assert!(matches!(check_targets(&[target("", "x.com")], 10), Err(BulkOpsError::InvalidTarget { .. })));
        assert!(matches!(
            check_targets(&[target("a", "x.com"), target("a", "y.com")], 1),
            Err(BulkOpsError::TooManyTargets { .. })
        ));
    }

    #[test]
    fn the_fingerprint_ignores_the_correlation_id_only() {
        let request = StartRequest {
            kind: Some(OperationKind::Suspend),
            targets: Some(TargetSet::List(vec![target("a", "x.com")])),
            mode: BulkMode::Atomic,
            max_concurrency: 4,
            idempotency_key: "k".into(),
            suspend_reason: String::new(),
            backup_directory: String::new(),
            correlation_id: "one".into(),
        };
        let retry = StartRequest { correlation_id: "two".into(), ..request.clone() };
        assert_eq!(fingerprint(&request), fingerprint(&retry));
        let other = StartRequest { mode: BulkMode::BestEffort, ..request.clone() };
        assert_ne!(fingerprint(&request), fingerprint(&other));
    }
}
