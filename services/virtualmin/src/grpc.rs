//! `VirtualminGrpc`: `mesh.virtualmin.v1.VirtualminGateway` over [`Gateway`].
//! It converts wire types to domain values and back, and errors to statuses;
//! the only file of this crate that knows tonic or the proto.

use std::time::{Duration, SystemTime};

use mesh_kit::error::{RpcError, to_status, to_status_proto};
use mesh_proto::virtualmin::v1 as pb;
use mesh_proto::virtualmin::v1::virtualmin_gateway_server::VirtualminGateway;
use secrecy::SecretString;
use tonic::{Code, Request, Response, Status};
use tracing::{instrument, warn};

use crate::config::VirtualminConfig;
use crate::domain::{ByteAmount, CalendarDate, Domain, DomainType, Plan};
use crate::error::{CallError, VirtualminError};
use crate::gateway::{
    BackupOperation, BackupState, CreateDomainSpec, DomainFilter, Gateway, HealthRecord, LimitSpec, ModifyDomainSpec,
};
use crate::metrics::ProgramStats;
use crate::params::Program;

impl RpcError for VirtualminError {
    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } | Self::UnsafeValue { .. } | Self::InvalidPageToken => Code::InvalidArgument,
            Self::UnknownServer { .. } | Self::DomainNotFound { .. } | Self::OperationNotFound { .. } => Code::NotFound,
            Self::DomainAlreadyExists { .. } => Code::AlreadyExists,
            Self::RateLimited { .. } | Self::ResponseTooLarge { .. } | Self::TooManyIdempotencyKeys { .. } => {
                Code::ResourceExhausted
            }
            // As in VpnUsers (REQUEST_ID_REUSED) and BulkOps, a reused key is well formed but conflicts
            // with the key's earlier use. And the mesh's own credentials or rights on the Virtualmin server
            // are wrong, not the caller's: an operator must fix the server entry, so the caller is told the
            // precondition failed.
            Self::IdempotencyKeyReused
            | Self::AuthenticationFailed { .. }
            | Self::AccessDenied { .. }
            | Self::RemoteApiNotAllowed { .. }
            | Self::ProgramFailed { .. }
            | Self::Rejected { .. } => Code::FailedPrecondition,
            Self::ProgramUnavailable { .. } => Code::Unimplemented,
            Self::Timeout { .. } | Self::WriteTimeout { .. } => Code::DeadlineExceeded,
            Self::Unreachable { .. }
            | Self::HttpStatus { .. }
            | Self::TruncatedResponse { .. }
            | Self::TlsFailed { .. } => Code::Unavailable,
            Self::MalformedResponse { .. }
            | Self::MalformedField { .. }
            | Self::UnexpectedContentType { .. }
            | Self::Internal { .. } => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        VirtualminError::reason(self)
    }

    fn domain(&self) -> &'static str {
        "mesh.virtualmin.v1"
    }

    fn field(&self) -> Option<&'static str> {
        VirtualminError::field(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::TooManyIdempotencyKeys { retry_after, .. } => {
                Some(*retry_after)
            }
            transient if transient.is_transient() => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

/// A failed call carries its context (seed section 3) into `ErrorInfo.metadata`
/// through the kit's `metadata` hook; the rest is the error's own.
impl RpcError for CallError {
    fn code(&self) -> Code {
        self.error.code()
    }

    fn reason(&self) -> &'static str {
        self.error.reason()
    }

    fn domain(&self) -> &'static str {
        RpcError::domain(&self.error)
    }

    fn field(&self) -> Option<&'static str> {
        self.error.field()
    }

    fn retry_after(&self) -> Option<Duration> {
        self.error.retry_after()
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        self.context.metadata()
    }
}

/// Logs a failed call with its context, then builds its status in `kit::error`.
fn status(call_error: &CallError) -> Status {
    let error = &call_error.error;
    warn!(
        operation = call_error.context.operation,
        server_id = %call_error.context.server_id,
        server_hostname = %call_error.context.server_hostname,
        correlation_id = %call_error.context.correlation_id,
        params = %call_error.context.sanitized_params,
        reason = error.reason(),
        error = %error,
        "virtualmin call failed"
    );
    to_status(call_error)
}

/// The gRPC face of the gateway.
#[derive(Clone, Debug)]
pub struct VirtualminGrpc {
    gateway: Gateway,
}

impl VirtualminGrpc {
    /// Serves `gateway`.
    #[must_use]
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }

    fn invalid(&self, server_id: &str, operation: &'static str, error: VirtualminError) -> Status {
        let context = self.gateway.client().context(server_id, operation, &crate::params::RemoteParams::new());
        status(&CallError { error, context })
    }

    fn page_size(&self, server_id: &str, requested: i32) -> Result<usize, Status> {
        let (settings, _) = self.gateway.settings();
        let invalid = |reason: String| {
            self.invalid(server_id, "list-domains", VirtualminError::InvalidArgument { field: "page_size", reason })
        };
        match requested {
            0 => Ok(settings.default_page_size as usize),
            size if size < 0 => Err(invalid("must not be negative".to_owned())),
            size if size.unsigned_abs() > settings.max_page_size => {
                Err(invalid(format!("must be at most {}", settings.max_page_size)))
            }
            size => Ok(size.unsigned_abs() as usize),
        }
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    time.into()
}

fn duration(value: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(value).unwrap_or_default()
}

fn byte_amount(amount: ByteAmount) -> pb::ByteAmount {
    use pb::byte_amount::Amount;
    let amount = match amount {
        ByteAmount::Exact(bytes) => Amount::ExactBytes(bytes),
        ByteAmount::Range { min_bytes, max_bytes_exclusive } => {
            Amount::Range(pb::ByteRange { min_bytes, max_bytes_exclusive })
        }
        ByteAmount::Unlimited => Amount::Unlimited(true),
    };
    pb::ByteAmount { amount: Some(amount) }
}

fn domain_type(value: DomainType) -> pb::DomainType {
    match value {
        DomainType::TopLevel => pb::DomainType::TopLevel,
        DomainType::SubServer => pb::DomainType::SubServer,
        DomainType::Alias => pb::DomainType::Alias,
        DomainType::AliasWithOwnEmail => pb::DomainType::AliasWithOwnEmail,
        DomainType::Unknown => pb::DomainType::Unspecified,
    }
}

fn domain_to_wire(domain: Domain) -> pb::Domain {
    pb::Domain {
        r#type: domain_type(domain.domain_type).into(),
        suspended: domain.suspension_reason.is_some(),
        name: domain.name,
        id: domain.id,
        parent_domain: domain.parent_domain.unwrap_or_default(),
        alias_target: domain.alias_target.unwrap_or_default(),
        description: domain.description,
        owner_username: domain.owner_username,
        plan_id: domain.plan_id.unwrap_or_default(),
        plan_name: domain.plan_name.unwrap_or_default(),
        template_name: domain.template_name.unwrap_or_default(),
        features: domain.features,
        suspension_reason: domain.suspension_reason.unwrap_or_default(),
        create_time: domain.created_at.map(timestamp),
        disk_quota: domain.disk_quota.map(byte_amount),
        disk_used: domain.disk_used.map(byte_amount),
        bandwidth_limit: domain.bandwidth_limit.map(byte_amount),
        bandwidth_used: domain.bandwidth_used.map(byte_amount),
        databases_size: domain.databases_size.map(byte_amount),
        database_count: domain.database_count,
        ip_address: domain.ip_address.unwrap_or_default(),
        ipv6_address: domain.ipv6_address.unwrap_or_default(),
        home_directory: domain.home_directory.unwrap_or_default(),
        contact_email: domain.contact_email.unwrap_or_default(),
        php_version: domain.php_version.unwrap_or_default(),
        ssl_cert_expire_time: domain.ssl_cert_expires_at.map(timestamp),
        last_login_time: domain.last_login_at.map(timestamp),
        url: domain.url.unwrap_or_default(),
    }
}

fn plan_to_wire(plan: Plan) -> pb::Plan {
    pb::Plan {
        id: plan.id,
        name: plan.name,
        disk_quota: plan.disk_quota.map(byte_amount),
        bandwidth_limit: plan.bandwidth_limit.map(byte_amount),
        max_domains: plan.max_domains,
        max_mailboxes: plan.max_mailboxes,
        max_databases: plan.max_databases,
        max_aliases: plan.max_aliases,
    }
}

fn health_to_wire(record: Option<HealthRecord>) -> pb::ServerHealth {
    let Some(record) = record else { return pb::ServerHealth::default() };
    let state = if record.failure_reason.is_some() { pb::HealthState::Unhealthy } else { pb::HealthState::Healthy };
    pb::ServerHealth {
        state: state.into(),
        reason: record.failure_reason.unwrap_or_default().to_owned(),
        latency: Some(duration(record.latency)),
        check_time: Some(timestamp(record.checked_at)),
    }
}

fn limit_from_wire(limit: Option<pb::ByteLimit>) -> Option<LimitSpec> {
    match limit?.limit? {
        pb::byte_limit::Limit::Bytes(bytes) => Some(LimitSpec::Bytes(bytes)),
        pb::byte_limit::Limit::Unlimited(true) => Some(LimitSpec::Unlimited),
        pb::byte_limit::Limit::Unlimited(false) => None,
    }
}

fn date_from_wire(date: Option<pb::Date>) -> Option<CalendarDate> {
    let date = date?;
    Some(CalendarDate {
        year: date.year,
        month: u8::try_from(date.month).unwrap_or_default(),
        day: u8::try_from(date.day).unwrap_or_default(),
    })
}

fn date_to_wire(date: CalendarDate) -> pb::Date {
    pb::Date { year: date.year, month: i32::from(date.month), day: i32::from(date.day) }
}

fn secret(text: String) -> Option<SecretString> {
    (!text.is_empty()).then(|| SecretString::from(text))
}

fn backup_to_wire(operation: BackupOperation) -> pb::BackupOperation {
    let (state, final_size, error) = match operation.state {
        BackupState::Running => (pb::BackupState::Running, None, None),
        BackupState::Succeeded { final_size } => (pb::BackupState::Succeeded, final_size.map(byte_amount), None),
        BackupState::Failed { error } => (pb::BackupState::Failed, None, Some(to_status_proto(&*error))),
    };
    pb::BackupOperation {
        operation_id: operation.operation_id,
        server_id: operation.server_id,
        domain_name: operation.domain_name,
        destination_path: operation.destination_path,
        state: state.into(),
        start_time: Some(timestamp(operation.started_at)),
        end_time: operation.ended_at.map(timestamp),
        final_size,
        error,
    }
}

fn config_to_wire(settings: &VirtualminConfig, loaded_at: SystemTime) -> pb::GetConfigResponse {
    pb::GetConfigResponse {
        timeouts: Some(pb::OperationTimeouts {
            api_request: Some(duration(settings.api_request_timeout)),
            api_health_check: Some(duration(settings.api_health_check_timeout)),
            api_backup: Some(duration(settings.api_backup_timeout)),
            api_bulk: Some(duration(settings.api_bulk_timeout)),
            connection: Some(duration(settings.connection_timeout)),
            read: Some(duration(settings.read_timeout)),
            write: Some(duration(settings.write_timeout)),
            provisioning: Some(duration(settings.provisioning_timeout)),
            domain_sync: Some(duration(settings.domain_sync_timeout)),
            usage_sync: Some(duration(settings.usage_sync_timeout)),
        }),
        retry_delay: Some(duration(settings.retry_delay)),
        max_retries: settings.max_retries,
        rate_limit_window: Some(duration(settings.rate_limit_window)),
        rate_limit_max_calls: settings.rate_limit_max_calls,
        connection_pool_size: settings.connection_pool_size,
        max_response_bytes: settings.max_response_bytes,
        slow_operation_threshold: Some(duration(settings.slow_operation_threshold)),
        servers: settings
            .servers
            .iter()
            .map(|server| pb::ConfiguredServer {
                server_id: server.id.clone(),
                hostname: server.hostname.clone(),
                port: u32::from(server.port),
                scheme: server.scheme.as_str().to_owned(),
                username: server.username.clone(),
                certificate_pinned: server.pinned_sha256.is_some(),
                custom_ca: server.ca_file.is_some(),
            })
            .collect(),
        load_time: Some(timestamp(loaded_at)),
        idempotency_ttl: Some(duration(settings.idempotency_ttl)),
        idempotency_max_keys: settings.idempotency_max_keys,
    }
}

fn program_metrics_to_wire(stats: ProgramStats) -> pb::ProgramMetrics {
    pb::ProgramMetrics {
        program: stats.program.to_owned(),
        calls: stats.calls,
        errors: stats.errors,
        total_latency: Some(duration(stats.total_latency)),
        latency_buckets: stats
            .cumulative_buckets
            .into_iter()
            .map(|(bound_ms, cumulative_count)| pb::LatencyBucket {
                upper_bound: Some(duration(Duration::from_millis(bound_ms))),
                cumulative_count,
            })
            .collect(),
        errors_by_reason: stats
            .errors_by_reason
            .into_iter()
            .map(|(reason, count)| pb::ErrorCount { reason: reason.to_owned(), count })
            .collect(),
    }
}

fn compression(value: i32) -> Result<Option<&'static str>, VirtualminError> {
    match pb::BackupCompression::try_from(value) {
        Ok(pb::BackupCompression::Unspecified) => Ok(None),
        Ok(pb::BackupCompression::Gzip) => Ok(Some("gzip")),
        Ok(pb::BackupCompression::Bzip2) => Ok(Some("bzip2")),
        Ok(pb::BackupCompression::Zstd) => Ok(Some("zstd")),
        Ok(pb::BackupCompression::Tar) => Ok(Some("tar")),
        Err(_) => Err(VirtualminError::InvalidArgument { field: "compression", reason: "unknown value".to_owned() }),
    }
}

#[tonic::async_trait]
impl VirtualminGateway for VirtualminGrpc {
    #[instrument(skip_all)]
    async fn list_servers(
        &self,
        request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let check_health = request.into_inner().check_health;
        let servers = self
            .gateway
            .list_servers(check_health)
            .await
            .into_iter()
            .map(|(entry, health)| pb::Server {
                server_id: entry.id,
                hostname: entry.hostname,
                port: u32::from(entry.port),
                health: Some(health_to_wire(health)),
            })
            .collect();
        Ok(Response::new(pb::ListServersResponse { servers }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn list_domains(
        &self,
        request: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("server_id", request.server_id.as_str());
        let page_size = self.page_size(&request.server_id, request.page_size)?;
        let domain_type = match pb::DomainType::try_from(request.r#type) {
            Ok(pb::DomainType::Unspecified) => None,
            Ok(pb::DomainType::TopLevel) => Some(DomainType::TopLevel),
            Ok(pb::DomainType::SubServer) => Some(DomainType::SubServer),
            Ok(pb::DomainType::Alias) => Some(DomainType::Alias),
            Ok(pb::DomainType::AliasWithOwnEmail) => Some(DomainType::AliasWithOwnEmail),
            Err(_) => {
                let error = VirtualminError::InvalidArgument { field: "type", reason: "unknown value".to_owned() };
                return Err(self.invalid(&request.server_id, "list-domains", error));
            }
        };
        let suspended = match pb::DomainStateFilter::try_from(request.state) {
            Ok(pb::DomainStateFilter::Unspecified) => None,
            Ok(pb::DomainStateFilter::Active) => Some(false),
            Ok(pb::DomainStateFilter::Suspended) => Some(true),
            Err(_) => {
                let error = VirtualminError::InvalidArgument { field: "state", reason: "unknown value".to_owned() };
                return Err(self.invalid(&request.server_id, "list-domains", error));
            }
        };
        let filter = DomainFilter {
            owner_username: non_empty(request.owner_username),
            domain_type,
            suspended,
            plan: non_empty(request.plan),
        };
        let page = self
            .gateway
            .list_domains(&request.server_id, filter, page_size, &request.page_token)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::ListDomainsResponse {
            domains: page.domains.into_iter().map(domain_to_wire).collect(),
            next_page_token: page.next_page_token,
            total_size: i32::try_from(page.total_size).unwrap_or(i32::MAX),
        }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn get_domain(
        &self,
        request: Request<pb::GetDomainRequest>,
    ) -> Result<Response<pb::GetDomainResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("server_id", request.server_id.as_str());
        let domain = self.gateway.get_domain(&request.server_id, &request.domain_name).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::GetDomainResponse { domain: Some(domain_to_wire(domain)) }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn create_domain(
        &self,
        request: Request<pb::CreateDomainRequest>,
    ) -> Result<Response<pb::CreateDomainResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("server_id", request.server_id.as_str());
        let spec = CreateDomainSpec {
            domain_name: request.domain_name,
            password: secret(request.password),
            owner_username: non_empty(request.owner_username),
            description: non_empty(request.description),
            contact_email: non_empty(request.contact_email),
            plan: non_empty(request.plan),
            parent_domain: non_empty(request.parent_domain),
            alias_target: non_empty(request.alias_target),
            disk_quota: limit_from_wire(request.disk_quota),
            bandwidth_limit: limit_from_wire(request.bandwidth_limit),
        };
        let domain = self
            .gateway
            .create_domain_once(&request.server_id, spec, &request.idempotency_key)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::CreateDomainResponse { domain: Some(domain_to_wire(domain)) }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn delete_domain(
        &self,
        request: Request<pb::DeleteDomainRequest>,
    ) -> Result<Response<pb::DeleteDomainResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("server_id", request.server_id.as_str());
        self.gateway.delete_domain(&request.server_id, &request.domain_name).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::DeleteDomainResponse {}))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn suspend_domain(
        &self,
        request: Request<pb::SuspendDomainRequest>,
    ) -> Result<Response<pb::SuspendDomainResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("server_id", request.server_id.as_str());
        let already_suspended = self
            .gateway
            .suspend_domain(&request.server_id, &request.domain_name, &request.reason)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::SuspendDomainResponse { already_suspended }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn unsuspend_domain(
        &self,
        request: Request<pb::UnsuspendDomainRequest>,
    ) -> Result<Response<pb::UnsuspendDomainResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("server_id", request.server_id.as_str());
        let already_active =
            self.gateway.unsuspend_domain(&request.server_id, &request.domain_name).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::UnsuspendDomainResponse { already_active }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn modify_domain(
        &self,
        request: Request<pb::ModifyDomainRequest>,
    ) -> Result<Response<pb::ModifyDomainResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("server_id", request.server_id.as_str());
        let spec = ModifyDomainSpec {
            domain_name: request.domain_name,
            disk_quota: limit_from_wire(request.disk_quota),
            bandwidth_limit: limit_from_wire(request.bandwidth_limit),
            new_password: secret(request.new_password),
            plan: non_empty(request.plan),
        };
        let domain = self.gateway.modify_domain(&request.server_id, spec).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::ModifyDomainResponse { domain: Some(domain_to_wire(domain)) }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn backup_domain(
        &self,
        request: Request<pb::BackupDomainRequest>,
    ) -> Result<Response<pb::BackupDomainResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("server_id", request.server_id.as_str());
        let compression =
            compression(request.compression).map_err(|e| self.invalid(&request.server_id, "backup-domain", e))?;
        let operation_id = self
            .gateway
            .backup_domain_once(
                &request.server_id,
                &request.domain_name,
                &request.destination_path,
                compression,
                &request.idempotency_key,
            )
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::BackupDomainResponse { operation_id }))
    }

    #[instrument(skip_all)]
    async fn get_backup_operation(
        &self,
        request: Request<pb::GetBackupOperationRequest>,
    ) -> Result<Response<pb::GetBackupOperationResponse>, Status> {
        let operation = self.gateway.backup_operation(&request.into_inner().operation_id).map_err(|e| status(&e))?;
        Ok(Response::new(pb::GetBackupOperationResponse { operation: Some(backup_to_wire(operation)) }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn get_bandwidth(
        &self,
        request: Request<pb::GetBandwidthRequest>,
    ) -> Result<Response<pb::GetBandwidthResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("server_id", request.server_id.as_str());
        let usage = self
            .gateway
            .bandwidth(
                &request.server_id,
                &request.domain_names,
                date_from_wire(request.start_date),
                date_from_wire(request.end_date),
            )
            .await
            .map_err(|e| status(&e))?;
        let domains = usage
            .into_iter()
            .map(|domain| {
                let days: Vec<pb::BandwidthDay> = domain
                    .days
                    .into_iter()
                    .map(|day| pb::BandwidthDay {
                        date: Some(date_to_wire(day.date)),
                        total_bytes: day.traffic.iter().map(|(_, bytes)| *bytes).fold(0, u64::saturating_add),
                        traffic: day
                            .traffic
                            .into_iter()
                            .map(|(kind, bytes)| pb::TrafficBytes { kind, bytes })
                            .collect(),
                    })
                    .collect();
                pb::DomainBandwidth {
                    domain_name: domain.domain_name,
                    total_bytes: days.iter().map(|day| day.total_bytes).fold(0, u64::saturating_add),
                    days,
                }
            })
            .collect();
        Ok(Response::new(pb::GetBandwidthResponse { domains }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let server_id = request.into_inner().server_id;
        tracing::Span::current().record("server_id", server_id.as_str());
        let plans = self.gateway.plans(&server_id).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::ListPlansResponse { plans: plans.into_iter().map(plan_to_wire).collect() }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        let server_id = request.into_inner().server_id;
        tracing::Span::current().record("server_id", server_id.as_str());
        let info = self.gateway.server_info(&server_id).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::GetServerInfoResponse {
            reported_hostname: info.reported_hostname,
            virtualmin_version: info.virtualmin_version,
            virtualmin_edition: info.virtualmin_edition,
            webmin_version: info.webmin_version,
            os: info.os,
            kernel_version: info.kernel_version,
            disk_total_bytes: info.disk_total_bytes,
            disk_free_bytes: info.disk_free_bytes,
            memory_total_bytes: info.memory_total_bytes,
            memory_free_bytes: info.memory_free_bytes,
            load_averages: info.load_averages,
            process_count: info.process_count,
            domain_count: info.domain_count,
        }))
    }

    #[instrument(skip_all, fields(server_id))]
    async fn check_server_health(
        &self,
        request: Request<pb::CheckServerHealthRequest>,
    ) -> Result<Response<pb::CheckServerHealthResponse>, Status> {
        let server_id = request.into_inner().server_id;
        tracing::Span::current().record("server_id", server_id.as_str());
        let record = self.gateway.check_health(&server_id).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::CheckServerHealthResponse { health: Some(health_to_wire(Some(record))) }))
    }

    #[instrument(skip_all)]
    async fn get_config(
        &self,
        _request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        let (settings, loaded_at) = self.gateway.settings();
        Ok(Response::new(config_to_wire(&settings, loaded_at)))
    }

    #[instrument(skip_all)]
    async fn get_call_metrics(
        &self,
        _request: Request<pb::GetCallMetricsRequest>,
    ) -> Result<Response<pb::GetCallMetricsResponse>, Status> {
        let metrics = self.gateway.client().metrics();
        let programs =
            Program::ALL.into_iter().map(|program| program_metrics_to_wire(metrics.snapshot(program))).collect();
        Ok(Response::new(pb::GetCallMetricsResponse { programs, prometheus_text: metrics.render_prometheus() }))
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;
    use crate::error::ErrorContext;

    fn call_status(error: VirtualminError, server_id: &str) -> Status {
        let context = Box::new(ErrorContext::now("create-domain", server_id, "", String::new()));
        status(&CallError { error, context })
    }

    #[test]
    fn an_empty_server_id_is_a_field_violation_and_an_unknown_one_is_not_found() {
        let empty = VirtualminError::InvalidArgument { field: "server_id", reason: "must not be empty".into() };
        let status = call_status(empty, "");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "server_id: must not be empty (create-domain)");
        let details = status.get_error_details();
        let violations = details.bad_request().expect("a BadRequest").field_violations.clone();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "server_id");
        assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");

        let status = call_status(VirtualminError::UnknownServer { server_id: "vm9".into() }, "vm9");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.get_error_details().error_info().unwrap().reason, "SERVER_NOT_FOUND");
    }

    #[test]
    fn a_reused_idempotency_key_is_a_failed_precondition_as_in_vpnusers_and_bulkops() {
        let status = call_status(VirtualminError::IdempotencyKeyReused, "vm1");
        assert_eq!(status.code(), Code::FailedPrecondition);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "IDEMPOTENCY_KEY_REUSED");
        assert!(details.bad_request().is_none(), "a precondition failure names no malformed field");
        assert!(details.retry_info().is_none(), "the same request never succeeds with this key");
    }
}
