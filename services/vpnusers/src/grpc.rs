//! `VpnUsersGrpc`: `mesh.vpnusers.v1.VpnUsers` over [`UserDirectory`]. It
//! converts wire types to domain values (ids, enums, timestamps, masks,
//! filters), calls the directory, and converts back; the only file of this
//! crate that knows tonic or the VpnUsers proto.

use std::time::Duration;

use mesh_kit::correlation;
use mesh_kit::error::{RpcError, ok_status_proto, to_status, to_status_proto};
use mesh_proto::common::v1::ItemResult;
use mesh_proto::vpnusers::v1 as pb;
use mesh_proto::vpnusers::v1::vpn_users_server::VpnUsers;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tracing::{debug, instrument};
use uuid::Uuid;

use crate::directory::UserDirectory;
use crate::error::VpnUsersError;
use crate::filter::{ByteRange, InstantRange, SortDirection, SortField, UserFilter, UserSort};
use crate::idempotency::{IdempotencyKey, Written};
use crate::model::{NewUser, User, UserPatch, UserStatus, VpnProtocol};
use crate::store::{BatchMode, ItemOutcome, ListQuery, StatusSelector};

impl RpcError for VpnUsersError {
    fn code(&self) -> Code {
        match self {
            Self::BatchTooLarge { .. }
            | Self::InvalidUsername { .. }
            | Self::InvalidEmail { .. }
            | Self::InvalidNote { .. }
            | Self::TrafficOutOfRange { .. }
            | Self::InvalidTimestamp { .. }
            | Self::InvalidStatus { .. }
            | Self::InvalidProtocol { .. }
            | Self::InvalidId { .. }
            | Self::DuplicateId { .. }
            | Self::EmptyUpdate
            | Self::InvalidUpdateMask { .. }
            | Self::InvalidPageSize { .. }
            | Self::InvalidPageNumber { .. }
            | Self::InvalidPageToken
            | Self::InvalidFilter { .. }
            | Self::EmptyFilter
            | Self::MissingSelector
            | Self::InvalidSearchQuery { .. }
            | Self::InvalidSignupDays { .. }
            | Self::InvalidRequestId { .. } => Code::InvalidArgument,
            // The key is fine; the state it names (a different stored request)
            // is what refuses the call, so retrying the same call cannot help.
            Self::RequestIdReused => Code::FailedPrecondition,
            Self::UsernameTaken { .. } | Self::DuplicateUsernameInBatch { .. } => Code::AlreadyExists,
            Self::UserNotFound { .. } => Code::NotFound,
            Self::BatchItemFailed { source, .. } => source.code(),
            Self::DatabaseUnavailable { .. } => Code::Unavailable,
            Self::Database { .. } | Self::CorruptRow { .. } | Self::CorruptStoredResponse => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        VpnUsersError::reason(self)
    }

    fn domain(&self) -> &'static str {
        "mesh.vpnusers.v1"
    }

    fn field(&self) -> Option<&'static str> {
        VpnUsersError::field(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        matches!(self.root(), Self::DatabaseUnavailable { .. }).then_some(Duration::from_secs(1))
    }
}

/// The gRPC face of the user directory.
#[derive(Debug, Clone)]
pub struct VpnUsersGrpc {
    directory: UserDirectory,
}

impl VpnUsersGrpc {
    /// Serves `directory`.
    #[must_use]
    pub fn new(directory: UserDirectory) -> Self {
        Self { directory }
    }
}

fn status(error: &VpnUsersError) -> Status {
    if let VpnUsersError::DatabaseUnavailable { source } = error.root() {
        tracing::warn!(error = %source, "database unavailable");
    }
    to_status(error)
}

fn item_result(item_id: String, error: Option<&VpnUsersError>) -> ItemResult {
    ItemResult { item_id, status: Some(error.map_or_else(ok_status_proto, to_status_proto)) }
}

// === wire -> domain ===

fn parse_id(raw: &str, field: &'static str) -> Result<Uuid, VpnUsersError> {
    Uuid::try_parse(raw).map_err(|_| VpnUsersError::InvalidId { field })
}

fn batch_mode(raw: i32) -> BatchMode {
    match pb::BatchMode::try_from(raw) {
        Ok(pb::BatchMode::PerItem) => BatchMode::PerItem,
        _ => BatchMode::AllOrNothing,
    }
}

/// A status; `unset_means` is what UNSPECIFIED stands for (`None`: refused).
fn user_status(raw: i32, field: &'static str, unset_means: Option<UserStatus>) -> Result<UserStatus, VpnUsersError> {
    let invalid = VpnUsersError::InvalidStatus { field };
    match pb::UserStatus::try_from(raw).map_err(|_| VpnUsersError::InvalidStatus { field })? {
        pb::UserStatus::Unspecified => unset_means.ok_or(invalid),
        pb::UserStatus::Active => Ok(UserStatus::Active),
        pb::UserStatus::Suspended => Ok(UserStatus::Suspended),
        pb::UserStatus::Expired => Ok(UserStatus::Expired),
        pb::UserStatus::Disabled => Ok(UserStatus::Disabled),
    }
}

fn vpn_protocol(raw: i32, field: &'static str, unset_means: Option<VpnProtocol>) -> Result<VpnProtocol, VpnUsersError> {
    let invalid = VpnUsersError::InvalidProtocol { field };
    match pb::VpnProtocol::try_from(raw).map_err(|_| VpnUsersError::InvalidProtocol { field })? {
        pb::VpnProtocol::Unspecified => unset_means.ok_or(invalid),
        pb::VpnProtocol::Wireguard => Ok(VpnProtocol::WireGuard),
        pb::VpnProtocol::Openvpn => Ok(VpnProtocol::OpenVpn),
        pb::VpnProtocol::Ikev2 => Ok(VpnProtocol::Ikev2),
        pb::VpnProtocol::L2tp => Ok(VpnProtocol::L2tp),
        pb::VpnProtocol::Shadowsocks => Ok(VpnProtocol::Shadowsocks),
        pb::VpnProtocol::Vless => Ok(VpnProtocol::Vless),
    }
}

/// A timestamp in Unix microseconds (sub-microsecond digits are dropped).
fn micros_from_wire(timestamp: &prost_types::Timestamp, field: &'static str) -> Result<i64, VpnUsersError> {
    let invalid = VpnUsersError::InvalidTimestamp { field };
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(invalid);
    }
    let micros = timestamp
        .seconds
        .checked_mul(1_000_000)
        .and_then(|micros| micros.checked_add(i64::from(timestamp.nanos / 1000)))
        .ok_or(VpnUsersError::InvalidTimestamp { field })?;
    crate::model::validate_instant(field, micros)?;
    Ok(micros)
}

fn optional_micros(
    timestamp: Option<&prost_types::Timestamp>,
    field: &'static str,
) -> Result<Option<i64>, VpnUsersError> {
    timestamp.map(|timestamp| micros_from_wire(timestamp, field)).transpose()
}

fn new_user(wire: pb::NewUser) -> Result<NewUser, VpnUsersError> {
    Ok(NewUser {
        status: user_status(wire.status, "status", Some(UserStatus::Active))?,
        protocol: vpn_protocol(wire.protocol, "protocol", Some(VpnProtocol::WireGuard))?,
        expires_at_micros: optional_micros(wire.expires_at.as_ref(), "expires_at")?,
        username: wire.username,
        email: wire.email,
        traffic_used_bytes: wire.traffic_used_bytes,
        traffic_limit_bytes: wire.traffic_limit_bytes,
        note: wire.note,
    })
}

fn user_update(wire: pb::UserUpdate) -> Result<(Uuid, UserPatch), VpnUsersError> {
    let id = parse_id(&wire.id, "id")?;
    let user = wire.user.unwrap_or_default();
    let mut patch = UserPatch::default();
    for path in wire.update_mask.map(|mask| mask.paths).unwrap_or_default() {
        match path.as_str() {
            "username" => patch.username = Some(user.username.clone()),
            "email" => patch.email = Some(user.email.clone()),
            "status" => patch.status = Some(user_status(user.status, "user.status", None)?),
            "protocol" => patch.protocol = Some(vpn_protocol(user.protocol, "user.protocol", None)?),
            "traffic_used_bytes" => patch.traffic_used_bytes = Some(user.traffic_used_bytes),
            "traffic_limit_bytes" => patch.traffic_limit_bytes = Some(user.traffic_limit_bytes),
            "expires_at" => {
                patch.expires_at_micros = Some(optional_micros(user.expires_at.as_ref(), "user.expires_at")?);
            }
            "note" => patch.note = Some(user.note.clone()),
            _ => return Err(VpnUsersError::InvalidUpdateMask { path }),
        }
    }
    Ok((id, patch))
}

fn non_empty(text: String) -> Option<String> {
    Some(text).filter(|text| !text.is_empty())
}

fn instant_range(wire: Option<pb::TimeRange>, field: &'static str) -> Result<InstantRange, VpnUsersError> {
    let wire = wire.unwrap_or_default();
    Ok(InstantRange {
        start_micros: optional_micros(wire.start_time.as_ref(), field)?,
        end_micros: optional_micros(wire.end_time.as_ref(), field)?,
    })
}

fn byte_range(wire: Option<pb::ByteRange>) -> ByteRange {
    let wire = wire.unwrap_or_default();
    ByteRange { min_bytes: wire.min_bytes, max_bytes: wire.max_bytes }
}

fn user_filter(wire: Option<pb::UserFilter>) -> Result<UserFilter, VpnUsersError> {
    let wire = wire.unwrap_or_default();
    let filter = UserFilter {
        statuses: wire
            .statuses
            .iter()
            .map(|raw| user_status(*raw, "filter.statuses", None))
            .collect::<Result<_, _>>()?,
        protocols: wire
            .protocols
            .iter()
            .map(|raw| vpn_protocol(*raw, "filter.protocols", None))
            .collect::<Result<_, _>>()?,
        created: instant_range(wire.created, "filter.created")?,
        expires: instant_range(wire.expires, "filter.expires")?,
        traffic_used: byte_range(wire.traffic_used),
        traffic_limit: byte_range(wire.traffic_limit),
        username: non_empty(wire.username),
        username_pattern: non_empty(wire.username_pattern),
        email: non_empty(wire.email),
        email_pattern: non_empty(wire.email_pattern),
    };
    filter.validate()?;
    Ok(filter)
}

fn user_sort(field: i32, direction: i32) -> UserSort {
    let field = match pb::UserSortField::try_from(field) {
        Ok(pb::UserSortField::Username) => SortField::Username,
        Ok(pb::UserSortField::UpdatedAt) => SortField::UpdatedAt,
        Ok(pb::UserSortField::ExpiresAt) => SortField::ExpiresAt,
        Ok(pb::UserSortField::TrafficUsed) => SortField::TrafficUsed,
        _ => SortField::CreatedAt,
    };
    let direction = match pb::SortDirection::try_from(direction) {
        Ok(pb::SortDirection::Descending) => SortDirection::Descending,
        _ => SortDirection::Ascending,
    };
    UserSort { field, direction }
}

// === domain -> wire ===

fn timestamp(micros: i64) -> prost_types::Timestamp {
    let nanos = i32::try_from(micros.rem_euclid(1_000_000) * 1000).expect("below 10^9");
    prost_types::Timestamp { seconds: micros.div_euclid(1_000_000), nanos }
}

fn user_to_wire(user: User) -> pb::User {
    let status = match user.status {
        UserStatus::Active => pb::UserStatus::Active,
        UserStatus::Suspended => pb::UserStatus::Suspended,
        UserStatus::Expired => pb::UserStatus::Expired,
        UserStatus::Disabled => pb::UserStatus::Disabled,
    };
    pb::User {
        id: user.id.to_string(),
        username: user.username,
        email: user.email,
        status: status.into(),
        protocol: protocol_to_wire(user.protocol).into(),
        traffic_used_bytes: user.traffic_used_bytes,
        traffic_limit_bytes: user.traffic_limit_bytes,
        expires_at: user.expires_at_micros.map(timestamp),
        created_at: Some(timestamp(user.created_at_micros)),
        updated_at: Some(timestamp(user.updated_at_micros)),
        note: user.note,
    }
}

fn protocol_to_wire(protocol: VpnProtocol) -> pb::VpnProtocol {
    match protocol {
        VpnProtocol::WireGuard => pb::VpnProtocol::Wireguard,
        VpnProtocol::OpenVpn => pb::VpnProtocol::Openvpn,
        VpnProtocol::Ikev2 => pb::VpnProtocol::Ikev2,
        VpnProtocol::L2tp => pb::VpnProtocol::L2tp,
        VpnProtocol::Shadowsocks => pb::VpnProtocol::Shadowsocks,
        VpnProtocol::Vless => pb::VpnProtocol::Vless,
    }
}

fn status_to_wire(status: UserStatus) -> pb::UserStatus {
    match status {
        UserStatus::Active => pb::UserStatus::Active,
        UserStatus::Suspended => pb::UserStatus::Suspended,
        UserStatus::Expired => pb::UserStatus::Expired,
        UserStatus::Disabled => pb::UserStatus::Disabled,
    }
}

/// Converts every item of a batch; in ALL_OR_NOTHING mode the first item
/// that does not convert refuses the call, naming its index.
fn convert_batch<W, D>(
    items: Vec<W>,
    mode: BatchMode,
    convert: impl Fn(W) -> Result<D, VpnUsersError>,
) -> Result<Vec<ItemOutcome<D>>, VpnUsersError> {
    let mut converted = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match convert(item) {
            Ok(value) => converted.push(Ok(value)),
            Err(source) if mode == BatchMode::AllOrNothing => {
                return Err(VpnUsersError::BatchItemFailed { index, source: Box::new(source) });
            }
            Err(error) => converted.push(Err(error)),
        }
    }
    Ok(converted)
}

/// Puts the domain's outcomes for the converted items back among the items
/// that failed to convert, in request order.
fn merge_outcomes<D, T>(converted: Vec<ItemOutcome<D>>, outcomes: Vec<ItemOutcome<T>>) -> Vec<ItemOutcome<T>> {
    let mut outcomes = outcomes.into_iter();
    converted
        .into_iter()
        .map(|item| match item {
            Ok(_) => outcomes.next().expect("one outcome per converted item"),
            Err(error) => Err(error),
        })
        .collect()
}

fn split_converted<D>(converted: &mut [ItemOutcome<D>]) -> Vec<D>
where
    D: Clone,
{
    converted.iter().filter_map(|item| item.as_ref().ok().cloned()).collect()
}

/// The idempotency key of a request whose `request_id` was taken out of it;
/// the fingerprint is the rest of the request, encoded.
fn idempotency_key(
    request_id: String,
    operation: &str,
    request_without_key: &impl Message,
) -> Result<Option<IdempotencyKey>, VpnUsersError> {
    if request_id.is_empty() {
        return Ok(None);
    }
    IdempotencyKey::parse(request_id, operation, &request_without_key.encode_to_vec())
}

/// Encodes a response for storing with its key.
fn with_encoding<R: Message>(response: R) -> (R, Vec<u8>) {
    let encoded = response.encode_to_vec();
    (response, encoded)
}

/// The response of a keyed write: made now, or the stored one of the first call.
fn written_response<R: Message + Default>(written: Written<R>) -> Result<R, VpnUsersError> {
    match written {
        Written::Done(response) => Ok(response),
        Written::Replayed(encoded) => R::decode(encoded.as_slice()).map_err(|_| VpnUsersError::CorruptStoredResponse),
    }
}

fn create_users_response(
    converted: Vec<ItemOutcome<NewUser>>,
    outcomes: Vec<ItemOutcome<User>>,
    usernames: Vec<String>,
) -> pb::CreateUsersResponse {
    let mut created_count = 0;
    let results = merge_outcomes(converted, outcomes)
        .into_iter()
        .zip(usernames)
        .map(|(outcome, username)| match outcome {
            Ok(user) => {
                created_count += 1;
                pb::CreateUserResult { result: Some(item_result(username, None)), user: Some(user_to_wire(user)) }
            }
            Err(error) => pb::CreateUserResult { result: Some(item_result(username, Some(&error))), user: None },
        })
        .collect();
    pb::CreateUsersResponse { results, created_count }
}

fn update_users_response(
    converted: Vec<ItemOutcome<(Uuid, UserPatch)>>,
    outcomes: Vec<ItemOutcome<User>>,
    ids: Vec<String>,
) -> pb::UpdateUsersResponse {
    let mut updated_count = 0;
    let results = merge_outcomes(converted, outcomes)
        .into_iter()
        .zip(ids)
        .map(|(outcome, id)| match outcome {
            Ok(user) => {
                updated_count += 1;
                pb::UpdateUserResult { result: Some(item_result(id, None)), user: Some(user_to_wire(user)) }
            }
            Err(error) => pb::UpdateUserResult { result: Some(item_result(id, Some(&error))), user: None },
        })
        .collect();
    pb::UpdateUsersResponse { results, updated_count }
}

fn delete_users_response(
    converted: Vec<ItemOutcome<Uuid>>,
    outcomes: Vec<ItemOutcome<Uuid>>,
    raw_ids: Vec<String>,
) -> pb::DeleteUsersResponse {
    let mut deleted_count = 0;
    let results = merge_outcomes(converted, outcomes)
        .into_iter()
        .zip(raw_ids)
        .map(|(outcome, id)| {
            deleted_count += u64::from(outcome.is_ok());
            item_result(id, outcome.as_ref().err())
        })
        .collect();
    pb::DeleteUsersResponse { results, deleted_count }
}

// === impl VpnUsers ===

#[tonic::async_trait]
impl VpnUsers for VpnUsersGrpc {
    #[instrument(skip_all, fields(item_count = request.get_ref().users.len()))]
    async fn create_users(
        &self,
        request: Request<pb::CreateUsersRequest>,
    ) -> Result<Response<pb::CreateUsersResponse>, Status> {
        let mut request = request.into_inner();
        let request_id = std::mem::take(&mut request.request_id);
        let key = idempotency_key(request_id, "CreateUsers", &request).map_err(|e| status(&e))?;
        let mode = batch_mode(request.mode);
        let usernames: Vec<String> = request.users.iter().map(|user| user.username.clone()).collect();
        let mut converted = convert_batch(request.users, mode, new_user).map_err(|e| status(&e))?;
        let new_users = split_converted(&mut converted);
        let response = match key {
            None => {
                let outcomes = self.directory.create_users(new_users, mode).await.map_err(|e| status(&e))?;
                create_users_response(converted, outcomes, usernames)
            }
            Some(key) => {
                let written = self
                    .directory
                    .create_users_keyed(new_users, mode, &key, |outcomes| {
                        with_encoding(create_users_response(converted, outcomes, usernames))
                    })
                    .await;
                written.and_then(written_response).map_err(|e| status(&e))?
            }
        };
        Ok(Response::new(response))
    }

    #[instrument(skip_all, fields(item_count = request.get_ref().updates.len()))]
    async fn update_users(
        &self,
        request: Request<pb::UpdateUsersRequest>,
    ) -> Result<Response<pb::UpdateUsersResponse>, Status> {
        let mut request = request.into_inner();
        let request_id = std::mem::take(&mut request.request_id);
        let key = idempotency_key(request_id, "UpdateUsers", &request).map_err(|e| status(&e))?;
        let mode = batch_mode(request.mode);
        let ids: Vec<String> = request.updates.iter().map(|update| update.id.clone()).collect();
        let mut converted = convert_batch(request.updates, mode, user_update).map_err(|e| status(&e))?;
        let updates = split_converted(&mut converted);
        let response = match key {
            None => {
                let outcomes = self.directory.update_users(updates, mode).await.map_err(|e| status(&e))?;
                update_users_response(converted, outcomes, ids)
            }
            Some(key) => {
                let written = self
                    .directory
                    .update_users_keyed(updates, mode, &key, |outcomes| {
                        with_encoding(update_users_response(converted, outcomes, ids))
                    })
                    .await;
                written.and_then(written_response).map_err(|e| status(&e))?
            }
        };
        Ok(Response::new(response))
    }

    #[instrument(skip_all, fields(item_count = request.get_ref().ids.len()))]
    async fn delete_users(
        &self,
        request: Request<pb::DeleteUsersRequest>,
    ) -> Result<Response<pb::DeleteUsersResponse>, Status> {
        let mut request = request.into_inner();
        let request_id = std::mem::take(&mut request.request_id);
        let key = idempotency_key(request_id, "DeleteUsers", &request).map_err(|e| status(&e))?;
        let mode = batch_mode(request.mode);
        let raw_ids = request.ids.clone();
        let mut converted = convert_batch(request.ids, mode, |raw| parse_id(&raw, "ids")).map_err(|e| status(&e))?;
        let ids = split_converted(&mut converted);
        let response = match key {
            None => {
                let outcomes = self.directory.delete_users(ids, mode).await.map_err(|e| status(&e))?;
                delete_users_response(converted, outcomes, raw_ids)
            }
            Some(key) => {
                let written = self
                    .directory
                    .delete_users_keyed(ids, mode, &key, |outcomes| {
                        with_encoding(delete_users_response(converted, outcomes, raw_ids))
                    })
                    .await;
                written.and_then(written_response).map_err(|e| status(&e))?
            }
        };
        Ok(Response::new(response))
    }

    #[instrument(skip_all, fields(item_count = request.get_ref().ids.len()))]
    async fn get_users(&self, request: Request<pb::GetUsersRequest>) -> Result<Response<pb::GetUsersResponse>, Status> {
        let request = request.into_inner();
        let mode = batch_mode(request.mode);
        let raw_ids = request.ids.clone();
        let mut converted = convert_batch(request.ids, mode, |raw| parse_id(&raw, "ids")).map_err(|e| status(&e))?;
        let ids = split_converted(&mut converted);
        let outcomes = self.directory.get_users(&ids, mode).await.map_err(|e| status(&e))?;
        let entries = merge_outcomes(converted, outcomes)
            .into_iter()
            .zip(raw_ids)
            .map(|(outcome, id)| match outcome {
                Ok(user) => pb::GetUsersEntry { result: Some(item_result(id, None)), user: Some(user_to_wire(user)) },
                Err(error) => pb::GetUsersEntry { result: Some(item_result(id, Some(&error))), user: None },
            })
            .collect();
        Ok(Response::new(pb::GetUsersResponse { entries }))
    }

    #[instrument(skip_all)]
    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        let id = parse_id(&request.into_inner().id, "id").map_err(|e| status(&e))?;
        let user = self.directory.get_user(id).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::GetUserResponse { user: Some(user_to_wire(user)) }))
    }

    #[instrument(skip_all)]
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let query = (|| {
            let page_size =
                self.directory.page_size("page_size", request.page_size, self.directory.default_page_size())?;
            let page_number = u32::try_from(request.page_number)
                .map_err(|_| VpnUsersError::InvalidPageNumber { requested: i64::from(request.page_number) })?;
            Ok::<_, VpnUsersError>(ListQuery {
                filter: user_filter(request.filter)?,
                sort: user_sort(request.sort_field, request.sort_direction),
                page_size,
                page_token: non_empty(request.page_token),
                page_number,
                include_total_size: request.include_total_size,
            })
        })()
        .map_err(|e| status(&e))?;
        let page = self.directory.list_users(&query).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::ListUsersResponse {
            users: page.users.into_iter().map(user_to_wire).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            page_number: i32::try_from(page.page_number).unwrap_or(i32::MAX),
            total_size: page.total_size.map_or(-1, |total| i64::try_from(total).unwrap_or(i64::MAX)),
        }))
    }

    #[instrument(skip_all)]
    async fn search_users(
        &self,
        request: Request<pb::SearchUsersRequest>,
    ) -> Result<Response<pb::SearchUsersResponse>, Status> {
        let request = request.into_inner();
        let page_size = self
            .directory
            .page_size("page_size", request.page_size, self.directory.default_page_size())
            .map_err(|e| status(&e))?;
        let page_token = non_empty(request.page_token);
        let page = self
            .directory
            .search_users(&request.query, page_size, page_token.as_deref())
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::SearchUsersResponse {
            hits: page
                .hits
                .into_iter()
                .map(|hit| pb::SearchHit { user: Some(user_to_wire(hit.user)), score: hit.score })
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[instrument(skip_all)]
    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::GetStatsResponse>, Status> {
        let stats = self.directory.stats(request.into_inner().signup_days).await.map_err(|e| status(&e))?;
        let cache = self.directory.cache_usage();
        Ok(Response::new(pb::GetStatsResponse {
            total_users: stats.total_users,
            by_status: stats
                .by_status
                .into_iter()
                .map(|(status, user_count)| pb::StatusCount { status: status_to_wire(status).into(), user_count })
                .collect(),
            by_protocol: stats
                .by_protocol
                .into_iter()
                .map(|(protocol, user_count)| pb::ProtocolCount {
                    protocol: protocol_to_wire(protocol).into(),
                    user_count,
                })
                .collect(),
            traffic_used_total_bytes: stats.traffic_used_total_bytes,
            traffic_limit_total_bytes: stats.traffic_limit_total_bytes,
            over_limit_users: stats.over_limit_users,
            signups: stats
                .signups_per_day
                .into_iter()
                .map(|(day_start_micros, user_count)| pb::DailySignups {
                    day_start: Some(timestamp(day_start_micros)),
                    user_count,
                })
                .collect(),
            cache: Some(pb::CacheUsage {
                enabled: cache.is_some(),
                hits: cache.map(|usage| usage.hits).unwrap_or_default(),
                misses: cache.map(|usage| usage.misses).unwrap_or_default(),
                failures: cache.map(|usage| usage.failures).unwrap_or_default(),
            }),
        }))
    }

    #[instrument(skip_all)]
    async fn set_status(
        &self,
        request: Request<pb::SetStatusRequest>,
    ) -> Result<Response<pb::SetStatusResponse>, Status> {
        let request = request.into_inner();
        let (new_status, selector) = (|| {
            let new_status = user_status(request.status, "status", None)?;
            let selector = match request.selector {
                Some(pb::set_status_request::Selector::Ids(ids)) => {
                    StatusSelector::Ids(ids.ids.iter().map(|raw| parse_id(raw, "ids.ids")).collect::<Result<_, _>>()?)
                }
                Some(pb::set_status_request::Selector::Filter(filter)) => {
                    StatusSelector::Filter(Box::new(user_filter(Some(filter))?))
                }
                None => return Err(VpnUsersError::MissingSelector),
            };
            Ok((new_status, selector))
        })()
        .map_err(|e| status(&e))?;
        let outcome = self.directory.set_status(new_status, &selector).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::SetStatusResponse {
            affected_count: outcome.affected_count,
            not_found_ids: outcome.not_found_ids.iter().map(ToString::to_string).collect(),
        }))
    }

    type ExportUsersStream = ReceiverStream<Result<pb::ExportUsersResponse, Status>>;

    #[instrument(skip_all)]
    async fn export_users(
        &self,
        request: Request<pb::ExportUsersRequest>,
    ) -> Result<Response<Self::ExportUsersStream>, Status> {
        let request = request.into_inner();
        let filter = user_filter(request.filter).map_err(|e| status(&e))?;
        let chunk_size = self.directory.export_chunk_size(&filter, request.chunk_size).map_err(|e| status(&e))?;
        // Two chunks in flight: the next query runs while the caller reads.
        let (sender, receiver) = mpsc::channel(2);
        let directory = self.directory.clone();
        let export = async move {
            let mut after = None;
            loop {
                let chunk = match directory.export_chunk(&filter, after, chunk_size).await {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        let _ = sender.send(Err(status(&error))).await;
                        return;
                    }
                };
                let is_last = chunk.len() < chunk_size as usize;
                after = chunk.last().map(|user| user.id);
                if !chunk.is_empty() {
                    let message = pb::ExportUsersResponse { users: chunk.into_iter().map(user_to_wire).collect() };
                    if sender.send(Ok(message)).await.is_err() {
                        debug!("export cancelled by the caller");
                        return;
                    }
                }
                if is_last {
                    return;
                }
            }
        };
        // The export outlives this handler; keep its logs and errors under
        // the caller's correlation id.
        match correlation::current() {
            Some(context) => tokio::spawn(correlation::scope(context, export)),
            None => tokio::spawn(export),
        };
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_microsecond_precision() {
        for micros in [0, 1, -1, 1_700_000_000_123_456, -86_400_000_000] {
            assert_eq!(micros_from_wire(&timestamp(micros), "t").unwrap(), micros);
        }
        let bad_nanos = prost_types::Timestamp { seconds: 1, nanos: 1_000_000_000 };
        assert_eq!(micros_from_wire(&bad_nanos, "t").unwrap_err().reason(), "INVALID_TIMESTAMP");
        let too_far = prost_types::Timestamp { seconds: i64::MAX, nanos: 0 };
        assert!(micros_from_wire(&too_far, "t").is_err());
    }

    #[test]
    fn unset_enums_take_defaults_only_where_documented() {
        assert_eq!(user_status(0, "status", Some(UserStatus::Active)).unwrap(), UserStatus::Active);
        assert_eq!(user_status(0, "status", None).unwrap_err().reason(), "INVALID_STATUS");
        assert_eq!(user_status(99, "status", Some(UserStatus::Active)).unwrap_err().reason(), "INVALID_STATUS");
        assert_eq!(vpn_protocol(3, "protocol", None).unwrap(), VpnProtocol::Ikev2);
    }

    #[test]
    fn update_masks_name_known_fields_only() {
        let update = |paths: &[&str]| pb::UserUpdate {
            id: Uuid::now_v7().to_string(),
            user: Some(pb::User { note: "n".into(), ..pb::User::default() }),
            update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(ToString::to_string).collect() }),
        };
        let (_, patch) = user_update(update(&["note", "expires_at"])).unwrap();
        assert_eq!(patch.note.as_deref(), Some("n"));
        assert_eq!(patch.expires_at_micros, Some(None));
        assert_eq!(user_update(update(&["id"])).unwrap_err().reason(), "INVALID_UPDATE_MASK");
        assert_eq!(user_update(update(&["status"])).unwrap_err().reason(), "INVALID_STATUS");
    }
}
