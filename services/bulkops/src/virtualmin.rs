//! `Virtualmin`: the calls BulkOps makes to the VirtualminGateway service,
//! through `mesh-proto`'s generated client over the kit's channel (so each
//! call carries the job's correlation id and remaining deadline), with
//! failures turned into recorded [`Failure`]s.

use std::time::Duration;

use mesh_kit::client::{self, MeshChannel};
use mesh_proto::virtualmin::v1 as pb;
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;
use prost::Message as _;
use tokio::time::Instant;
use tonic::Code;
use tonic_types::StatusExt;

use crate::model::Failure;

/// The `ErrorInfo` domain of failures BulkOps itself records on a target.
const OWN_DOMAIN: &str = "mesh.bulkops.v1";
/// How long opening the channel to VirtualminGateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Domains per ListDomains page when resolving a selector.
const LIST_PAGE_SIZE: i32 = 1000;

/// A connection to VirtualminGateway.
#[derive(Clone, Debug)]
pub struct Virtualmin {
    client: VirtualminGatewayClient<MeshChannel>,
}

/// A backup's state as BulkOps needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupProgress {
    /// Still running.
    Running,
    /// Done.
    Succeeded,
    /// Failed.
    Failed(Failure),
}

impl Virtualmin {
    /// A lazily connected client of the VirtualminGateway at `endpoint`.
    pub fn connect(endpoint: &str) -> Result<Self, tonic::transport::Error> {
        let channel = client::connect_lazy(endpoint, CONNECT_TIMEOUT)?;
        Ok(Self { client: VirtualminGatewayClient::new(channel) })
    }

    /// The ids of the configured servers.
    pub async fn server_ids(&self) -> Result<Vec<String>, tonic::Status> {
        let response = self.client.clone().list_servers(pb::ListServersRequest { check_health: false }).await?;
        Ok(response.into_inner().servers.into_iter().map(|server| server.server_id).collect())
    }

    /// Every domain of `server_id` matching the filters, in Virtualmin's order.
    pub async fn list_domain_names(
        &self,
        server_id: &str,
        owner_username: &str,
        plan: &str,
        suspended: Option<bool>,
    ) -> Result<Vec<(String, bool)>, tonic::Status> {
        let state = match suspended {
            None => pb::DomainStateFilter::Unspecified,
            Some(true) => pb::DomainStateFilter::Suspended,
            Some(false) => pb::DomainStateFilter::Active,
        };
        let mut names = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pb::ListDomainsRequest {
                server_id: server_id.to_owned(),
                page_size: LIST_PAGE_SIZE,
                page_token,
                owner_username: owner_username.to_owned(),
                r#type: pb::DomainType::Unspecified.into(),
                state: state.into(),
                plan: plan.to_owned(),
            };
            let page = self.client.clone().list_domains(request).await?.into_inner();
            names.extend(page.domains.into_iter().map(|domain| (domain.name, domain.suspended)));
            if page.next_page_token.is_empty() {
                return Ok(names);
            }
            page_token = page.next_page_token;
        }
    }

    /// Suspends a domain; `Ok(true)` when it already was suspended.
    pub async fn suspend(&self, server_id: &str, domain_name: &str, reason: &str) -> Result<bool, Failure> {
        let request = pb::SuspendDomainRequest {
            server_id: server_id.to_owned(),
            domain_name: domain_name.to_owned(),
            reason: reason.to_owned(),
        };
        let response = self.client.clone().suspend_domain(request).await.map_err(|s| failure_of(&s))?;
        Ok(response.into_inner().already_suspended)
    }

    /// Activates a domain; `Ok(true)` when it already was active.
    pub async fn unsuspend(&self, server_id: &str, domain_name: &str) -> Result<bool, Failure> {
        let request =
            pb::UnsuspendDomainRequest { server_id: server_id.to_owned(), domain_name: domain_name.to_owned() };
        let response = self.client.clone().unsuspend_domain(request).await.map_err(|s| failure_of(&s))?;
        Ok(response.into_inner().already_active)
    }

    /// Whether a domain is suspended now.
    pub async fn is_suspended(&self, server_id: &str, domain_name: &str) -> Result<bool, Failure> {
        let request = pb::GetDomainRequest { server_id: server_id.to_owned(), domain_name: domain_name.to_owned() };
        let response = self.client.clone().get_domain(request).await.map_err(|s| failure_of(&s))?;
        let domain = response
            .into_inner()
            .domain
            .ok_or_else(|| own_failure(Code::Internal, "EMPTY_RESPONSE", "GetDomain returned no domain"))?;
        Ok(domain.suspended)
    }

    /// Starts a backup under `idempotency_key`; returns its operation id. A
    /// repeat with the same key (a retry, or a resume after a crash) is answered
    /// by VirtualminGateway with the first call's operation, without a second backup.
    pub async fn start_backup(
        &self,
        server_id: &str,
        domain_name: &str,
        path: &str,
        idempotency_key: &str,
    ) -> Result<String, Failure> {
        let request = pb::BackupDomainRequest {
            server_id: server_id.to_owned(),
            domain_name: domain_name.to_owned(),
            destination_path: path.to_owned(),
            compression: pb::BackupCompression::Gzip.into(),
            idempotency_key: idempotency_key.to_owned(),
        };
        let response = self.client.clone().backup_domain(request).await.map_err(|s| failure_of(&s))?;
        Ok(response.into_inner().operation_id)
    }

    /// Where a backup stands.
    pub async fn backup_progress(&self, operation_id: &str) -> Result<BackupProgress, Failure> {
        let request = pb::GetBackupOperationRequest { operation_id: operation_id.to_owned() };
        let response = self.client.clone().get_backup_operation(request).await.map_err(|s| failure_of(&s))?;
        let operation = response.into_inner().operation.unwrap_or_default();
        Ok(match operation.state() {
            pb::BackupState::Succeeded => BackupProgress::Succeeded,
            pb::BackupState::Failed => BackupProgress::Failed(failure_of_status(operation.error.unwrap_or_default())),
            pb::BackupState::Running | pb::BackupState::Unspecified => BackupProgress::Running,
        })
    }

    /// Probes a server: `Ok(latency)` when healthy.
    pub async fn check_server(&self, server_id: &str) -> Result<Duration, Failure> {
        let request = pb::CheckServerHealthRequest { server_id: server_id.to_owned() };
        let response = self.client.clone().check_server_health(request).await.map_err(|s| failure_of(&s))?;
        let health = response.into_inner().health.unwrap_or_default();
        let latency = health.latency.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default();
        if health.state() == pb::HealthState::Healthy {
            Ok(latency)
        } else {
            Err(Failure {
                code: Code::Unavailable as i32,
                reason: if health.reason.is_empty() { "SERVER_UNHEALTHY".to_owned() } else { health.reason },
                domain: "mesh.virtualmin.v1".to_owned(),
                message: format!("server {server_id} is unhealthy"),
                retry_after: None,
            })
        }
    }
}

/// Runs `call`, giving up at `deadline` with DEADLINE_EXCEEDED. The grpc-timeout
/// sent with the call (from the call context) lets VirtualminGateway stop too.
pub async fn within<T>(deadline: Instant, call: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::time::timeout_at(deadline, call).await.unwrap_or_else(|_elapsed| {
        Err(own_failure(Code::DeadlineExceeded, "JOB_TIMEOUT", "the job's time (VIRTUALMIN_API_BULK_TIMEOUT) ran out"))
    })
}

/// A failure BulkOps itself decided.
#[must_use]
pub fn own_failure(code: Code, reason: &str, message: impl Into<String>) -> Failure {
    Failure {
        code: code as i32,
        reason: reason.to_owned(),
        domain: OWN_DOMAIN.to_owned(),
        message: message.into(),
        retry_after: None,
    }
}

/// A VirtualminGateway status as a recorded failure, keeping its `ErrorInfo`
/// reason and, for RESOURCE_EXHAUSTED, the delay its `RetryInfo` advises.
#[must_use]
pub fn failure_of(status: &tonic::Status) -> Failure {
    let details = status.get_error_details();
    let (reason, domain) = details.error_info().map_or_else(
        || (format!("{:?}", status.code()).to_uppercase(), String::new()),
        |info| (info.reason.clone(), info.domain.clone()),
    );
    let retry_after = details.retry_info().and_then(|info| info.retry_delay);
    Failure { code: status.code() as i32, reason, domain, message: status.message().to_owned(), retry_after }
}

/// A failed backup operation's `google.rpc.Status` as a recorded failure:
/// its `ErrorInfo` reason (`BACKUP_FAILED` when it has none) and `RetryInfo` delay.
fn failure_of_status(error: tonic_types::pb::Status) -> Failure {
    let mut failure = Failure {
        code: error.code,
        reason: "BACKUP_FAILED".to_owned(),
        domain: "mesh.virtualmin.v1".to_owned(),
        message: error.message,
        retry_after: None,
    };
    for detail in &error.details {
        if detail.type_url.ends_with("/google.rpc.ErrorInfo")
            && let Ok(info) = tonic_types::pb::ErrorInfo::decode(detail.value.as_slice())
        {
            failure.reason = info.reason;
            failure.domain = info.domain;
        } else if detail.type_url.ends_with("/google.rpc.RetryInfo")
            && let Ok(info) = tonic_types::pb::RetryInfo::decode(detail.value.as_slice())
        {
            failure.retry_after = info.retry_delay.and_then(|d| Duration::try_from(d).ok());
        }
    }
    failure
}

/// Whether a failed call may still have taken effect (the answer was lost),
/// so the outcome must be read back from Virtualmin rather than assumed.
#[must_use]
pub fn outcome_unknown(failure: &Failure) -> bool {
    [Code::DeadlineExceeded, Code::Unavailable, Code::Cancelled, Code::Unknown, Code::Internal]
        .iter()
        .any(|code| *code as i32 == failure.code)
}
