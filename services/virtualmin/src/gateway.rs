//! `Gateway`: the operation behind each RPC, in plain Rust. It validates the
//! request, builds the remote program's parameters, calls the client, parses
//! the reply, and turns Virtualmin's retry answers ("already disabled", "not
//! disabled") into outcomes. It also owns what Virtualmin lacks: paging over a
//! listing snapshot, backups as pollable operations, idempotency keys for
//! create and backup, and last-known health.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::join_all;
use mesh_kit::ConfigWatch;
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

use crate::client::VirtualminClient;
use crate::config::{ServerEntry, TimeoutClass, VirtualminConfig};
use crate::domain::{ByteAmount, CalendarDate, Domain, DomainBandwidth, DomainType, Plan, ServerInfo};
use crate::error::{CallError, VirtualminError};
use crate::idempotency::{IdempotencyKeys, KeyLimits, RequestFingerprint, check_key, fingerprint};
use crate::params::{Program, RemoteParams, check_domain_name, check_username, check_value};
use crate::wire;

/// How long a listing snapshot serves later pages.
const SNAPSHOT_TTL: Duration = Duration::from_secs(120);
/// Most listing snapshots kept at once.
const MAX_SNAPSHOTS: usize = 32;
/// How long a finished backup operation can still be polled.
const OPERATION_RETENTION: Duration = Duration::from_secs(3600);
/// Bytes per disk quota block on Linux (`quota_bsize`).
const QUOTA_BLOCK_BYTES: u64 = 1024;

/// Filters of a domain listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainFilter {
    /// Only this owner's domains.
    pub owner_username: Option<String>,
    /// Only this type.
    pub domain_type: Option<DomainType>,
    /// `Some(true)`: only suspended; `Some(false)`: only active.
    pub suspended: Option<bool>,
    /// Only this plan.
    pub plan: Option<String>,
}

/// One page of domains.
#[derive(Debug)]
pub struct DomainPage {
    /// The domains of this page.
    pub domains: Vec<Domain>,
    /// The token of the next page; empty on the last.
    pub next_page_token: String,
    /// Matching domains over all pages.
    pub total_size: usize,
}

/// A limit to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSpec {
    /// At most this many bytes.
    Bytes(u64),
    /// No limit.
    Unlimited,
}

/// A domain to create.
#[derive(Debug)]
pub struct CreateDomainSpec {
    /// The domain name.
    pub domain_name: String,
    /// Administrator password (top-level servers).
    pub password: Option<SecretString>,
    /// Administrator user name.
    pub owner_username: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Contact email.
    pub contact_email: Option<String>,
    /// Plan id or name.
    pub plan: Option<String>,
    /// Parent, for a sub-server.
    pub parent_domain: Option<String>,
    /// Target, for an alias.
    pub alias_target: Option<String>,
    /// Disk quota.
    pub disk_quota: Option<LimitSpec>,
    /// Bandwidth limit.
    pub bandwidth_limit: Option<LimitSpec>,
}

/// Changes to a domain.
#[derive(Debug, Default)]
pub struct ModifyDomainSpec {
    /// The domain name.
    pub domain_name: String,
    /// New disk quota.
    pub disk_quota: Option<LimitSpec>,
    /// New bandwidth limit.
    pub bandwidth_limit: Option<LimitSpec>,
    /// New administrator password.
    pub new_password: Option<SecretString>,
    /// New plan, applied.
    pub plan: Option<String>,
}

/// Where a backup stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupState {
    /// Running.
    Running,
    /// Done, with the size Virtualmin reported.
    Succeeded { final_size: Option<ByteAmount> },
    /// Failed.
    Failed { error: Box<CallError> },
}

/// A backup started by [`Gateway::backup_domain`].
#[derive(Clone, Debug)]
pub struct BackupOperation {
    /// The operation id.
    pub operation_id: String,
    /// The server.
    pub server_id: String,
    /// The domain.
    pub domain_name: String,
    /// The destination path.
    pub destination_path: String,
    /// The state.
    pub state: BackupState,
    /// Start.
    pub started_at: SystemTime,
    /// End, once ended.
    pub ended_at: Option<SystemTime>,
}

/// A health probe's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthRecord {
    /// `None` when healthy, else the error reason.
    pub failure_reason: Option<&'static str>,
    /// How long the probe took.
    pub latency: Duration,
    /// When it ran.
    pub checked_at: SystemTime,
}

/// A listing kept so later pages do not fetch the whole listing again.
#[derive(Debug)]
struct Snapshot {
    created: Instant,
    server_id: String,
    filter: DomainFilter,
    domains: Arc<Vec<Domain>>,
}

/// The operations of the `VirtualminGateway` service.
#[derive(Clone, Debug)]
pub struct Gateway {
    client: VirtualminClient,
    config: ConfigWatch<VirtualminConfig>,
    state: Arc<GatewayState>,
}

#[derive(Debug, Default)]
struct GatewayState {
    snapshots: Mutex<HashMap<String, Snapshot>>,
    backups: Mutex<HashMap<String, BackupOperation>>,
    health: Mutex<HashMap<String, HealthRecord>>,
    loaded_at: Mutex<Option<SystemTime>>,
    /// Outcomes of keyed `CreateDomain` calls.
    created_by_key: IdempotencyKeys<Domain>,
    /// Operation ids of keyed `BackupDomain` calls.
    backups_by_key: IdempotencyKeys<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gateway {
    /// Serves calls with `client` under the live `config`.
    #[must_use]
    pub fn new(client: VirtualminClient, config: ConfigWatch<VirtualminConfig>) -> Self {
        let state = Arc::new(GatewayState::default());
        *lock(&state.loaded_at) = Some(SystemTime::now());
        let mut watcher = config.clone();
        let watched_state = Arc::downgrade(&state);
        tokio::spawn(async move {
            while watcher.changed().await.is_ok() {
                let Some(state) = watched_state.upgrade() else { return };
                *lock(&state.loaded_at) = Some(SystemTime::now());
            }
        });
        Self { client, config, state }
    }

    /// The client, for metrics.
    #[must_use]
    pub fn client(&self) -> &VirtualminClient {
        &self.client
    }

    /// The settings in force and when they were loaded.
    #[must_use]
    pub fn settings(&self) -> (Arc<VirtualminConfig>, SystemTime) {
        (self.config.borrow().clone(), lock(&self.state.loaded_at).unwrap_or(SystemTime::UNIX_EPOCH))
    }

    fn invalid(&self, server_id: &str, operation: &'static str, error: VirtualminError) -> CallError {
        CallError { error, context: self.client.context(server_id, operation, &RemoteParams::new()) }
    }

    /// The configured server `server_id` names: an empty id is a malformed
    /// request (`INVALID_ARGUMENT` on `server_id`), a non-empty one nobody
    /// configured is `SERVER_NOT_FOUND`.
    fn require_server(&self, server_id: &str, operation: &'static str) -> Result<ServerEntry, CallError> {
        if server_id.is_empty() {
            let error = VirtualminError::InvalidArgument { field: "server_id", reason: "must not be empty".to_owned() };
            return Err(self.invalid(server_id, operation, error));
        }
        self.config.borrow().server(server_id).cloned().ok_or_else(|| {
            self.invalid(server_id, operation, VirtualminError::UnknownServer { server_id: server_id.to_owned() })
        })
    }

    /// Every configured server with its last (or a fresh) health record.
    pub async fn list_servers(&self, check_health: bool) -> Vec<(ServerEntry, Option<HealthRecord>)> {
        let settings = self.config.borrow().clone();
        if check_health {
            let probes = settings.servers.iter().map(|server| self.check_health(&server.id));
            // The whole fan-out is bounded by the bulk timeout; each probe by the health timeout.
            let _ = tokio::time::timeout(settings.api_bulk_timeout, join_all(probes)).await;
        }
        let health = lock(&self.state.health);
        settings.servers.iter().map(|server| (server.clone(), health.get(&server.id).cloned())).collect()
    }

    /// Probes one server with `info --search host` under the health-check timeout.
    pub async fn check_health(&self, server_id: &str) -> Result<HealthRecord, CallError> {
        self.require_server(server_id, "CheckServerHealth")?;
        let params =
            RemoteParams::new().value("search", "search", "host").map_err(|e| self.invalid(server_id, "info", e))?;
        let started = Instant::now();
        let result =
            self.client.call(server_id, Program::Info, &params, TimeoutClass::HealthCheck).await.and_then(|body| {
                wire::decode::<serde::de::IgnoredAny>(Program::Info, &body, &[])
                    .map(|_| ())
                    .map_err(|error| CallError { error, context: self.client.context(server_id, "info", &params) })
            });
        let record = HealthRecord {
            failure_reason: result.as_ref().err().map(|e| e.error.reason()),
            latency: started.elapsed(),
            checked_at: SystemTime::now(),
        };
        if let Err(error) = &result {
            warn!(server_id, reason = error.error.reason(), "virtualmin server unhealthy");
        }
        lock(&self.state.health).insert(server_id.to_owned(), record.clone());
        Ok(record)
    }

    /// One page of a server's domains.
    pub async fn list_domains(
        &self,
        server_id: &str,
        filter: DomainFilter,
        page_size: usize,
        page_token: &str,
    ) -> Result<DomainPage, CallError> {
        self.require_server(server_id, "list-domains")?;
        let (domains, offset) = if page_token.is_empty() {
            (self.fetch_listing(server_id, &filter).await?, 0)
        } else {
            let (snapshot_id, offset) = decode_page_token(page_token)
                .ok_or_else(|| self.invalid(server_id, "list-domains", VirtualminError::InvalidPageToken))?;
            let cached = {
                let snapshots = lock(&self.state.snapshots);
                match snapshots.get(&snapshot_id) {
                    Some(snapshot) if snapshot.server_id != server_id || snapshot.filter != filter => {
                        return Err(self.invalid(server_id, "list-domains", VirtualminError::InvalidPageToken));
                    }
                    Some(snapshot) if snapshot.created.elapsed() < SNAPSHOT_TTL => Some(snapshot.domains.clone()),
                    _ => None,
                }
            };
            // An expired snapshot is fetched again and paging goes on from the same offset.
            let domains = match cached {
                Some(domains) => domains,
                None => self.fetch_listing(server_id, &filter).await?,
            };
            (domains, offset)
        };
        let total_size = domains.len();
        let end = offset.saturating_add(page_size).min(total_size);
        let page = domains.get(offset.min(total_size)..end).unwrap_or_default().to_vec();
        let next_page_token = if end < total_size {
            let snapshot_id = uuid::Uuid::now_v7().simple().to_string();
            let mut snapshots = lock(&self.state.snapshots);
            snapshots.retain(|_, snapshot| snapshot.created.elapsed() < SNAPSHOT_TTL);
            if snapshots.len() >= MAX_SNAPSHOTS
                && let Some(oldest) =
                    snapshots.iter().min_by_key(|(_, snapshot)| snapshot.created).map(|(id, _)| id.clone())
            {
                snapshots.remove(&oldest);
            }
            snapshots.insert(
                snapshot_id.clone(),
                Snapshot { created: Instant::now(), server_id: server_id.to_owned(), filter, domains },
            );
            encode_page_token(&snapshot_id, end)
        } else {
            String::new()
        };
        Ok(DomainPage { domains: page, next_page_token, total_size })
    }

    async fn fetch_listing(&self, server_id: &str, filter: &DomainFilter) -> Result<Arc<Vec<Domain>>, CallError> {
        let build = || -> Result<RemoteParams, VirtualminError> {
            let mut params = RemoteParams::new().flag("multiline");
            if let Some(owner) = &filter.owner_username {
                check_username("owner_username", owner)?;
                params = params.value("user", "owner_username", owner)?;
            }
            if let Some(plan) = &filter.plan {
                params = params.value("plan", "plan", plan)?;
            }
            params = match filter.suspended {
                Some(true) => params.flag("disabled"),
                Some(false) => params.flag("enabled"),
                None => params,
            };
            Ok(params)
        };
        let params = build().map_err(|e| self.invalid(server_id, "list-domains", e))?;
        let result = self.run_list_domains(server_id, &params).await;
        let mut domains = match result {
            Ok(domains) => domains,
            // An owner without domains is an empty listing, not a missing domain.
            Err(error) if filter.owner_username.is_some() && error.error.reason() == "DOMAIN_NOT_FOUND" => Vec::new(),
            Err(error) => return Err(error),
        };
        if let Some(domain_type) = filter.domain_type {
            domains.retain(|domain| domain.domain_type == domain_type);
        }
        Ok(Arc::new(domains))
    }

    async fn run_list_domains(&self, server_id: &str, params: &RemoteParams) -> Result<Vec<Domain>, CallError> {
        let body = self.client.call(server_id, Program::ListDomains, params, TimeoutClass::DomainSync).await?;
        // A big listing takes tens of milliseconds to parse: keep it off the async workers.
        let parsed = tokio::task::spawn_blocking(move || wire::parse_domain_list(&body))
            .await
            .unwrap_or_else(|e| Err(VirtualminError::Internal { reason: format!("parser task failed: {e}") }));
        parsed.map_err(|error| CallError { error, context: self.client.context(server_id, "list-domains", params) })
    }

    /// One domain.
    pub async fn get_domain(&self, server_id: &str, domain_name: &str) -> Result<Domain, CallError> {
        self.require_server(server_id, "list-domains")?;
        let params = RemoteParams::new()
            .flag("multiline")
            .value("domain", "domain_name", domain_name)
            .and_then(|params| check_domain_name("domain_name", domain_name).map(|()| params))
            .map_err(|e| self.invalid(server_id, "list-domains", e))?;
        let body = self.client.call(server_id, Program::ListDomains, &params, TimeoutClass::Request).await?;
        let context = || self.client.context(server_id, "list-domains", &params);
        let domains = wire::parse_domain_list(&body).map_err(|error| CallError { error, context: context() })?;
        domains.into_iter().find(|domain| domain.name.eq_ignore_ascii_case(domain_name)).ok_or_else(|| CallError {
            error: VirtualminError::DomainNotFound { domain: domain_name.to_owned() },
            context: context(),
        })
    }

    /// Creates a domain and returns it as Virtualmin then lists it.
    pub async fn create_domain(&self, server_id: &str, spec: CreateDomainSpec) -> Result<Domain, CallError> {
        self.require_server(server_id, "create-domain")?;
        let domain_name = spec.domain_name.clone();
        let params = create_domain_params(spec).map_err(|e| self.invalid(server_id, "create-domain", e))?;
        let body = self.client.call(server_id, Program::CreateDomain, &params, TimeoutClass::Provisioning).await?;
        let secrets: Vec<&str> = params.secret_values().collect();
        wire::decode::<serde::de::IgnoredAny>(Program::CreateDomain, &body, &secrets).map_err(|error| {
            let error = match error {
                VirtualminError::DomainAlreadyExists { .. } => {
                    VirtualminError::DomainAlreadyExists { domain: domain_name.clone() }
                }
                other => other,
            };
            CallError { error, context: self.client.context(server_id, "create-domain", &params) }
        })?;
        info!(server_id, domain = domain_name, "virtual server created");
        self.get_domain(server_id, &domain_name).await
    }

    /// Creates a domain once per `idempotency_key` (see [`crate::idempotency`]):
    /// a repeat with the same key and spec answers the first call's outcome.
    /// An empty key creates without that protection.
    pub async fn create_domain_once(
        &self,
        server_id: &str,
        spec: CreateDomainSpec,
        idempotency_key: &str,
    ) -> Result<Domain, CallError> {
        if idempotency_key.is_empty() {
            return self.create_domain(server_id, spec).await;
        }
        // A request no server could take is refused before it claims the key.
        self.require_server(server_id, "create-domain")?;
        check_key(idempotency_key).map_err(|e| self.invalid(server_id, "create-domain", e))?;
        let request = create_fingerprint(server_id, &spec);
        let gateway = self.clone();
        let server = server_id.to_owned();
        let refuse = |error| self.invalid(server_id, "create-domain", error);
        let created = self.state.created_by_key.run(idempotency_key, request, self.key_limits(), refuse, {
            move |after_unknown_outcome| async move {
                let domain_name = spec.domain_name.clone();
                let owner = spec.owner_username.clone();
                match gateway.create_domain(&server, spec).await {
                    // The earlier run with this key may have created it before its outcome was lost:
                    // Virtualmin's "already hosting" is then this call's success (reference §5).
                    Err(error)
                        if after_unknown_outcome
                            && matches!(error.error, VirtualminError::DomainAlreadyExists { .. }) =>
                    {
                        let domain = gateway.get_domain(&server, &domain_name).await?;
                        if owner.as_ref().is_some_and(|owner| *owner != domain.owner_username) {
                            return Err(error);
                        }
                        info!(server_id = server, domain = domain_name, "keyed create found the domain it created");
                        Ok(domain)
                    }
                    other => other,
                }
            }
        });
        created.await
    }

    /// Starts a backup once per `idempotency_key`: a repeat with the same key
    /// and request returns the first operation id. An empty key always starts one.
    pub async fn backup_domain_once(
        &self,
        server_id: &str,
        domain_name: &str,
        destination_path: &str,
        compression: Option<&'static str>,
        idempotency_key: &str,
    ) -> Result<String, CallError> {
        if idempotency_key.is_empty() {
            return self.backup_domain(server_id, domain_name, destination_path, compression);
        }
        self.require_server(server_id, "backup-domain")?;
        check_key(idempotency_key).map_err(|e| self.invalid(server_id, "backup-domain", e))?;
        let request = fingerprint(&[server_id, domain_name, destination_path, compression.unwrap_or_default()]);
        let refuse = |error| self.invalid(server_id, "backup-domain", error);
        let started = self.state.backups_by_key.run(idempotency_key, request, self.key_limits(), refuse, |_| {
            let started = self.backup_domain(server_id, domain_name, destination_path, compression);
            async move { started }
        });
        started.await
    }

    fn key_limits(&self) -> KeyLimits {
        let settings = self.config.borrow();
        KeyLimits {
            ttl: settings.idempotency_ttl,
            max_keys: usize::try_from(settings.idempotency_max_keys).unwrap_or(usize::MAX),
        }
    }

    /// Deletes a domain.
    pub async fn delete_domain(&self, server_id: &str, domain_name: &str) -> Result<(), CallError> {
        let params = self.domain_params(server_id, Program::DeleteDomain, domain_name)?;
        self.run_mutation(server_id, Program::DeleteDomain, &params).await?;
        info!(server_id, domain = domain_name, "virtual server deleted");
        Ok(())
    }

    /// Suspends a domain; `Ok(true)` when it already was.
    pub async fn suspend_domain(&self, server_id: &str, domain_name: &str, reason: &str) -> Result<bool, CallError> {
        let mut params = self.domain_params(server_id, Program::DisableDomain, domain_name)?;
        if !reason.is_empty() {
            params = params.value("why", "reason", reason).map_err(|e| self.invalid(server_id, "disable-domain", e))?;
        }
        self.run_idempotent(server_id, Program::DisableDomain, &params, "is already disabled").await
    }

    /// Unsuspends a domain; `Ok(true)` when it already was active.
    pub async fn unsuspend_domain(&self, server_id: &str, domain_name: &str) -> Result<bool, CallError> {
        let params = self.domain_params(server_id, Program::EnableDomain, domain_name)?;
        self.run_idempotent(server_id, Program::EnableDomain, &params, "is not disabled").await
    }

    /// Changes a domain and returns it as it is now.
    pub async fn modify_domain(&self, server_id: &str, spec: ModifyDomainSpec) -> Result<Domain, CallError> {
        let params = self.domain_params(server_id, Program::ModifyDomain, &spec.domain_name)?;
        let domain_name = spec.domain_name.clone();
        let params = modify_domain_params(params, spec).map_err(|e| self.invalid(server_id, "modify-domain", e))?;
        self.run_mutation(server_id, Program::ModifyDomain, &params).await?;
        info!(server_id, domain = domain_name, "virtual server modified");
        self.get_domain(server_id, &domain_name).await
    }

    /// Starts a backup and returns its operation id at once.
    pub fn backup_domain(
        &self,
        server_id: &str,
        domain_name: &str,
        destination_path: &str,
        compression: Option<&'static str>,
    ) -> Result<String, CallError> {
        let invalid = |e| self.invalid(server_id, "backup-domain", e);
        let mut params = self.domain_params(server_id, Program::BackupDomain, domain_name)?;
        check_destination(destination_path).map_err(invalid)?;
        params = params.value("dest", "destination_path", destination_path).map_err(invalid)?.flag("all-features");
        if let Some(compression) = compression {
            params = params.value("compression", "compression", compression).map_err(invalid)?;
        }
        let operation_id = uuid::Uuid::now_v7().to_string();
        let operation = BackupOperation {
            operation_id: operation_id.clone(),
            server_id: server_id.to_owned(),
            domain_name: domain_name.to_owned(),
            destination_path: destination_path.to_owned(),
            state: BackupState::Running,
            started_at: SystemTime::now(),
            ended_at: None,
        };
        {
            let mut backups = lock(&self.state.backups);
            backups
                .retain(|_, op| op.ended_at.is_none_or(|end| end.elapsed().unwrap_or_default() < OPERATION_RETENTION));
            backups.insert(operation_id.clone(), operation);
        }
        let gateway = self.clone();
        let server_id = server_id.to_owned();
        let task_operation_id = operation_id.clone();
        let run = async move {
            let result = gateway.run_mutation(&server_id, Program::BackupDomain, &params).await;
            let state = match result {
                Ok(output) => BackupState::Succeeded { final_size: wire::backup_final_size(&output) },
                Err(error) => {
                    warn!(server_id, reason = error.error.reason(), error = %error, "backup failed");
                    BackupState::Failed { error: Box::new(error) }
                }
            };
            if let Some(operation) = lock(&gateway.state.backups).get_mut(&task_operation_id) {
                operation.state = state;
                operation.ended_at = Some(SystemTime::now());
            }
        };
        // The backup outlives the RPC; it keeps the caller's correlation id for its logs and errors.
        match mesh_kit::correlation::current() {
            Some(context) => drop(tokio::spawn(mesh_kit::correlation::scope(context, run))),
            None => drop(tokio::spawn(run)),
        }
        Ok(operation_id)
    }

    /// A backup operation.
    pub fn backup_operation(&self, operation_id: &str) -> Result<BackupOperation, CallError> {
        lock(&self.state.backups).get(operation_id).cloned().ok_or_else(|| {
            self.invalid(
                "",
                "GetBackupOperation",
                VirtualminError::OperationNotFound { operation_id: operation_id.chars().take(64).collect() },
            )
        })
    }

    /// Traffic per day and kind.
    pub async fn bandwidth(
        &self,
        server_id: &str,
        domain_names: &[String],
        start: Option<CalendarDate>,
        end: Option<CalendarDate>,
    ) -> Result<Vec<DomainBandwidth>, CallError> {
        self.require_server(server_id, "list-bandwidth")?;
        let build = || -> Result<RemoteParams, VirtualminError> {
            let mut params = RemoteParams::new();
            if domain_names.is_empty() {
                params = params.flag("all-domains");
            }
            for name in domain_names {
                check_domain_name("domain_names", name)?;
                params = params.value("domain", "domain_names", name)?;
            }
            for (name, field, date) in [("start", "start_date", start), ("end", "end_date", end)] {
                if let Some(date) = date {
                    if !date.is_valid() {
                        return Err(VirtualminError::InvalidArgument { field, reason: "not a valid date".to_owned() });
                    }
                    params = params.value(name, field, &date.to_string())?;
                }
            }
            if let (Some(start), Some(end)) = (start, end)
                && start > end
            {
                return Err(VirtualminError::InvalidArgument {
                    field: "end_date",
                    reason: "must not be before start_date".to_owned(),
                });
            }
            // The only shape that keeps every domain's days (reference §2.3).
            Ok(params.flag("simple-multiline"))
        };
        let params = build().map_err(|e| self.invalid(server_id, "list-bandwidth", e))?;
        let body = self.client.call(server_id, Program::ListBandwidth, &params, TimeoutClass::UsageSync).await?;
        wire::parse_bandwidth(&body)
            .map_err(|error| CallError { error, context: self.client.context(server_id, "list-bandwidth", &params) })
    }

    /// The plans of a server.
    pub async fn plans(&self, server_id: &str) -> Result<Vec<Plan>, CallError> {
        self.require_server(server_id, "list-plans")?;
        let params = RemoteParams::new().flag("multiline");
        let body = self.client.call(server_id, Program::ListPlans, &params, TimeoutClass::Request).await?;
        wire::parse_plan_list(&body)
            .map_err(|error| CallError { error, context: self.client.context(server_id, "list-plans", &params) })
    }

    /// What `info` says about a server.
    pub async fn server_info(&self, server_id: &str) -> Result<ServerInfo, CallError> {
        self.require_server(server_id, "info")?;
        let params = RemoteParams::new();
        let body = self.client.call(server_id, Program::Info, &params, TimeoutClass::Request).await?;
        let success = wire::decode::<serde::de::IgnoredAny>(Program::Info, &body, &[])
            .map_err(|error| CallError { error, context: self.client.context(server_id, "info", &params) })?;
        Ok(wire::parse_server_info(success.output.as_deref().unwrap_or_default()))
    }

    fn domain_params(&self, server_id: &str, program: Program, domain_name: &str) -> Result<RemoteParams, CallError> {
        self.require_server(server_id, program.name())?;
        check_domain_name("domain_name", domain_name)
            .and_then(|()| RemoteParams::new().value("domain", "domain_name", domain_name))
            .map_err(|e| self.invalid(server_id, program.name(), e))
    }

    /// Runs a mutating program and returns its text output.
    async fn run_mutation(
        &self,
        server_id: &str,
        program: Program,
        params: &RemoteParams,
    ) -> Result<String, CallError> {
        let body = self.client.call(server_id, program, params, program.default_timeout_class()).await?;
        let secrets: Vec<&str> = params.secret_values().collect();
        wire::decode::<serde::de::IgnoredAny>(program, &body, &secrets)
            .map(|success| success.output.unwrap_or_default())
            .map_err(|error| CallError { error, context: self.client.context(server_id, program.name(), params) })
    }

    /// Runs a program whose retry answer means "already done".
    async fn run_idempotent(
        &self,
        server_id: &str,
        program: Program,
        params: &RemoteParams,
        already_done_marker: &str,
    ) -> Result<bool, CallError> {
        match self.run_mutation(server_id, program, params).await {
            Ok(_) => Ok(false),
            Err(CallError { error: VirtualminError::ProgramFailed { message, .. }, .. })
                if message.ends_with(already_done_marker) =>
            {
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }
}

/// Every field of a create request, the password included: a key names one request exactly.
fn create_fingerprint(server_id: &str, spec: &CreateDomainSpec) -> RequestFingerprint {
    let optional = |value: &Option<String>| value.clone().unwrap_or_default();
    fingerprint(&[
        server_id,
        &spec.domain_name,
        spec.password.as_ref().map(ExposeSecret::expose_secret).unwrap_or_default(),
        &optional(&spec.owner_username),
        &optional(&spec.description),
        &optional(&spec.contact_email),
        &optional(&spec.plan),
        &optional(&spec.parent_domain),
        &optional(&spec.alias_target),
        &format!("{:?}", spec.disk_quota),
        &format!("{:?}", spec.bandwidth_limit),
    ])
}

fn create_domain_params(spec: CreateDomainSpec) -> Result<RemoteParams, VirtualminError> {
    check_domain_name("domain_name", &spec.domain_name)?;
    let mut params = RemoteParams::new().value("domain", "domain_name", &spec.domain_name)?;
    let is_top_level = spec.parent_domain.is_none() && spec.alias_target.is_none();
    if spec.parent_domain.is_some() && spec.alias_target.is_some() {
        return Err(VirtualminError::InvalidArgument {
            field: "alias_target",
            reason: "set parent_domain or alias_target, not both".to_owned(),
        });
    }
    if let Some(parent) = &spec.parent_domain {
        check_domain_name("parent_domain", parent)?;
        params = params.value("parent", "parent_domain", parent)?;
    }
    if let Some(target) = &spec.alias_target {
        check_domain_name("alias_target", target)?;
        params = params.value("alias", "alias_target", target)?;
    }
    if is_top_level {
        let password = spec.password.ok_or_else(|| VirtualminError::InvalidArgument {
            field: "password",
            reason: "required for a top-level server".to_owned(),
        })?;
        params = params.secret("pass", "password", password)?;
    } else if spec.disk_quota.is_some() || spec.bandwidth_limit.is_some() {
        return Err(VirtualminError::InvalidArgument {
            field: "disk_quota",
            reason: "sub-servers and aliases share their parent's limits".to_owned(),
        });
    }
    if let Some(owner) = &spec.owner_username {
        check_username("owner_username", owner)?;
        params = params.value("user", "owner_username", owner)?;
    }
    if let Some(description) = &spec.description {
        if description.contains(':') {
            return Err(VirtualminError::InvalidArgument {
                field: "description",
                reason: "must not contain `:`".into(),
            });
        }
        params = params.value("desc", "description", description)?;
    }
    if let Some(email) = &spec.contact_email {
        check_value("contact_email", email)?;
        if !email.contains('@') || email.contains(char::is_whitespace) {
            return Err(VirtualminError::InvalidArgument {
                field: "contact_email",
                reason: "not an email address".into(),
            });
        }
        params = params.value("email", "contact_email", email)?;
    }
    if let Some(plan) = &spec.plan {
        params = params.value("plan", "plan", plan)?;
    }
    params = params.flag("default-features");
    match spec.disk_quota {
        Some(limit) => {
            let blocks = quota_blocks(limit);
            params = params.value("quota", "disk_quota", &blocks)?.value("uquota", "disk_quota", &blocks)?;
        }
        None if is_top_level => params = params.flag("limits-from-plan"),
        None => {}
    }
    if let Some(LimitSpec::Bytes(bytes)) = spec.bandwidth_limit {
        params = params.value("bandwidth", "bandwidth_limit", &bytes.to_string())?;
    }
    Ok(params)
}

fn modify_domain_params(mut params: RemoteParams, spec: ModifyDomainSpec) -> Result<RemoteParams, VirtualminError> {
    let nothing_to_change = spec.disk_quota.is_none()
        && spec.bandwidth_limit.is_none()
        && spec.new_password.is_none()
        && spec.plan.is_none();
    if nothing_to_change {
        return Err(VirtualminError::InvalidArgument {
            field: "disk_quota",
            reason: "set at least one of disk_quota, bandwidth_limit, new_password, plan".to_owned(),
        });
    }
    if let Some(limit) = spec.disk_quota {
        let blocks = quota_blocks(limit);
        params = params.value("quota", "disk_quota", &blocks)?.value("uquota", "disk_quota", &blocks)?;
    }
    match spec.bandwidth_limit {
        Some(LimitSpec::Bytes(bytes)) => params = params.value("bw", "bandwidth_limit", &bytes.to_string())?,
        Some(LimitSpec::Unlimited) => params = params.value("bw", "bandwidth_limit", "NONE")?,
        None => {}
    }
    if let Some(password) = spec.new_password {
        params = params.secret("pass", "new_password", password)?;
    }
    if let Some(plan) = &spec.plan {
        params = params.value("plan", "plan", plan)?.flag("apply-plan");
    }
    Ok(params)
}

/// A quota in 1024-byte blocks, rounded up, or `UNLIMITED`.
fn quota_blocks(limit: LimitSpec) -> String {
    match limit {
        LimitSpec::Bytes(bytes) => bytes.div_ceil(QUOTA_BLOCK_BYTES).to_string(),
        LimitSpec::Unlimited => "UNLIMITED".to_owned(),
    }
}

/// A backup destination must be an absolute local path: remote URLs carry
/// credentials and would make the server contact hosts of the caller's choosing.
fn check_destination(path: &str) -> Result<(), VirtualminError> {
    let invalid =
        |reason: &str| VirtualminError::InvalidArgument { field: "destination_path", reason: reason.to_owned() };
    check_value("destination_path", path)?;
    if !path.starts_with('/') || path.contains("://") {
        return Err(invalid("must be an absolute path on the Virtualmin server"));
    }
    if path.split('/').any(|segment| segment == "..") {
        return Err(invalid("must not contain `..`"));
    }
    Ok(())
}

fn encode_page_token(snapshot_id: &str, offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{snapshot_id}:{offset}"))
}

fn decode_page_token(token: &str) -> Option<(String, usize)> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, ':');
    if parts.next()? != "v1" {
        return None;
    }
    let snapshot_id = parts.next()?.to_owned();
    let offset = parts.next()?.parse().ok()?;
    Some((snapshot_id, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway with no configured server: nothing it is asked reaches a network.
    fn unconfigured_gateway() -> Gateway {
        let (_, config) = tokio::sync::watch::channel(Arc::new(VirtualminConfig::default()));
        let client = VirtualminClient::new(config.clone(), mesh_kit::ConfigSource::default()).unwrap();
        Gateway::new(client, config)
    }

    fn spec(domain_name: &str) -> CreateDomainSpec {
        CreateDomainSpec {
            domain_name: domain_name.into(),
            password: Some(SecretString::from("s3cret-pass")),
            owner_username: None,
            description: None,
            contact_email: None,
            plan: None,
            parent_domain: None,
            alias_target: None,
            disk_quota: None,
            bandwidth_limit: None,
        }
    }

    /// The error of every call that takes a server id, in call order.
    async fn server_errors(gateway: &Gateway, server_id: &str) -> Vec<VirtualminError> {
        let modify =
            || ModifyDomainSpec { domain_name: "a.example".into(), plan: Some("p".into()), ..Default::default() };
        let results = [
            gateway.list_domains(server_id, DomainFilter::default(), 10, "").await.map(drop),
            gateway.get_domain(server_id, "a.example").await.map(drop),
            gateway.create_domain(server_id, spec("a.example")).await.map(drop),
            gateway.create_domain_once(server_id, spec("a.example"), "").await.map(drop),
            gateway.create_domain_once(server_id, spec("a.example"), "key-1").await.map(drop),
            gateway.delete_domain(server_id, "a.example").await,
            gateway.suspend_domain(server_id, "a.example", "").await.map(drop),
            gateway.unsuspend_domain(server_id, "a.example").await.map(drop),
            gateway.modify_domain(server_id, modify()).await.map(drop),
            gateway.backup_domain(server_id, "a.example", "/backup/a.tar.gz", None).map(drop),
            gateway.backup_domain_once(server_id, "a.example", "/backup/a.tar.gz", None, "key-2").await.map(drop),
            gateway.bandwidth(server_id, &[], None, None).await.map(drop),
            gateway.plans(server_id).await.map(drop),
            gateway.server_info(server_id).await.map(drop),
            gateway.check_health(server_id).await.map(drop),
        ];
        results.into_iter().map(|result| result.unwrap_err().error).collect()
    }

    #[tokio::test]
    async fn an_empty_server_id_is_an_invalid_argument_on_every_call() {
        let gateway = unconfigured_gateway();
        for error in server_errors(&gateway, "").await {
            assert_eq!(
                error,
                VirtualminError::InvalidArgument { field: "server_id", reason: "must not be empty".into() }
            );
            assert_eq!(error.field(), Some("server_id"));
        }
        assert!(gateway.state.created_by_key.is_empty(), "a refused create claims no key");
        assert!(gateway.state.backups_by_key.is_empty(), "a refused backup claims no key");
    }

    #[tokio::test]
    async fn an_unknown_server_id_is_not_found_on_every_call() {
        let gateway = unconfigured_gateway();
        for error in server_errors(&gateway, "vm9").await {
            assert_eq!(error, VirtualminError::UnknownServer { server_id: "vm9".into() });
        }
        assert!(gateway.state.created_by_key.is_empty(), "a refused create claims no key");
    }

    #[tokio::test]
    async fn an_unknown_operation_names_its_id_and_no_server() {
        let gateway = unconfigured_gateway();
        let error = gateway.backup_operation("no-such-operation").unwrap_err();
        assert_eq!(error.error, VirtualminError::OperationNotFound { operation_id: "no-such-operation".into() });
        assert_eq!(error.to_string(), "no backup operation with id `no-such-operation` (GetBackupOperation)");
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_garbage() {
        let token = encode_page_token("abc", 200);
        assert_eq!(decode_page_token(&token), Some(("abc".to_owned(), 200)));
        assert_eq!(decode_page_token("not a token"), None);
        assert_eq!(decode_page_token(&URL_SAFE_NO_PAD.encode("v2:abc:1")), None);
    }

    #[test]
    fn quotas_are_whole_blocks() {
        assert_eq!(quota_blocks(LimitSpec::Bytes(1)), "1");
        assert_eq!(quota_blocks(LimitSpec::Bytes(2048)), "2");
        assert_eq!(quota_blocks(LimitSpec::Unlimited), "UNLIMITED");
    }

    #[test]
    fn backup_destinations_are_local_paths() {
        check_destination("/backup/a.tar.gz").unwrap();
        for bad in ["backup/a", "ssh://root:pw@host:/x", "/a/../etc/passwd", "/x\n--all-domains", "-x"] {
            assert!(check_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_params_follow_virtualmin_rules() {
        let spec = CreateDomainSpec {
            domain_name: "new.example".into(),
            password: Some(SecretString::from("s3cret-pass")),
            owner_username: None,
            description: Some("New site".into()),
            contact_email: None,
            plan: None,
            parent_domain: None,
            alias_target: None,
            disk_quota: Some(LimitSpec::Bytes(1 << 30)),
            bandwidth_limit: Some(LimitSpec::Bytes(1 << 40)),
        };
        let params = create_domain_params(spec).unwrap();
        assert_eq!(
            params.to_string(),
            "domain=new.example pass=[redacted] desc=New site default-features quota=1048576 uquota=1048576 bandwidth=1099511627776"
        );
    }

    #[test]
    fn modify_needs_a_change() {
        let error = modify_domain_params(RemoteParams::new(), ModifyDomainSpec::default()).unwrap_err();
        assert_eq!(error.reason(), "INVALID_ARGUMENT");
    }
}
