//! `CacheGrpc`: `mesh.cache.v1.Cache` over the domain types. It converts
//! wire types to domain values (TTLs, patterns, lease ids), calls the store
//! and the lease table, and converts back; the only file of this crate that
//! knows tonic or the proto.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use mesh_kit::ConfigWatch;
use mesh_kit::error::{RpcError, ok_status_proto, to_status, to_status_proto};
use mesh_proto::cache::v1 as pb;
use mesh_proto::cache::v1::cache_server::Cache;
use mesh_proto::common::v1::ItemResult;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::instrument;

use crate::config::CacheConfig;
use crate::error::CacheError;
use crate::health::{HealthReport, assess};
use crate::lease::{LeaseOutcome, LeaseTable};
use crate::pattern::KeyPattern;
use crate::store::{CacheStore, CachedValue};

impl RpcError for CacheError {
    fn code(&self) -> Code {
        match self {
            Self::EmptyKey
            | Self::KeyTooLarge { .. }
            | Self::ValueTooLarge { .. }
            | Self::TooManyTags { .. }
            | Self::TagTooLarge { .. }
            | Self::InvalidTtl { .. }
            | Self::InvalidPattern { .. }
            | Self::PatternTooComplex { .. }
            | Self::TooManyKeys { .. } => Code::InvalidArgument,
            Self::LeaseNotFound { .. } => Code::FailedPrecondition,
            Self::TooManyLeases { .. } => Code::ResourceExhausted,
            Self::Internal { .. } => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        CacheError::reason(self)
    }

    fn domain(&self) -> &'static str {
        "mesh.cache.v1"
    }

    fn field(&self) -> Option<&'static str> {
        CacheError::field(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        matches!(self, Self::TooManyLeases { .. }).then_some(Duration::from_secs(1))
    }
}

/// The gRPC face of the cache: the store, its leases and the live settings.
#[derive(Debug, Clone)]
pub struct CacheGrpc {
    store: Arc<CacheStore>,
    leases: Arc<LeaseTable>,
    config: ConfigWatch<CacheConfig>,
}

impl CacheGrpc {
    /// Serves `store` and `leases` with the settings in `config`.
    #[must_use]
    pub fn new(store: Arc<CacheStore>, leases: Arc<LeaseTable>, config: ConfigWatch<CacheConfig>) -> Self {
        Self { store, leases, config }
    }

    fn settings(&self) -> Arc<CacheConfig> {
        self.config.borrow().clone()
    }
}

/// Converts a requested TTL (of a value or of a lease); unset means `default`.
fn ttl_from_wire(
    ttl: Option<&prost_types::Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, CacheError> {
    let Some(ttl) = ttl else {
        return Ok(default);
    };
    let invalid = |reason: String| CacheError::InvalidTtl { reason };
    // `google.protobuf.Duration` allows |nanos| < 1e9 only; the conversion
    // below would carry the excess into seconds instead of refusing it.
    if ttl.nanos.unsigned_abs() >= 1_000_000_000 {
        return Err(invalid("nanos must be between -999999999 and 999999999".to_owned()));
    }
    let ttl = Duration::try_from(*ttl).map_err(|_| invalid("must be positive".to_owned()))?;
    if ttl.is_zero() {
        return Err(invalid("must be positive".to_owned()));
    }
    if ttl > max {
        return Err(invalid(format!("{}s exceeds the maximum of {}s", ttl.as_secs(), max.as_secs())));
    }
    Ok(ttl)
}

fn timestamp_at(instant: Instant) -> prost_types::Timestamp {
    let remaining = instant.saturating_duration_since(Instant::now());
    (SystemTime::now() + remaining).into()
}

fn check_batch_size(count: usize, config: &CacheConfig) -> Result<(), CacheError> {
    if count > config.max_batch_size {
        return Err(CacheError::TooManyKeys { count, max: config.max_batch_size });
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), CacheError> {
    if key.is_empty() { Err(CacheError::EmptyKey) } else { Ok(()) }
}

fn item(key: String, result: Result<(), CacheError>) -> ItemResult {
    let status = match result {
        Ok(()) => ok_status_proto(),
        Err(error) => to_status_proto(&error),
    };
    ItemResult { item_id: key, status: Some(status) }
}

fn tag_strings(value: &CachedValue) -> Vec<String> {
    value.tags.iter().map(ToString::to_string).collect()
}

fn status(error: &CacheError) -> Status {
    to_status(error)
}

impl CacheGrpc {
    fn store_entry(&self, entry: pb::CacheEntry, config: &CacheConfig) -> Result<(), CacheError> {
        let ttl = ttl_from_wire(entry.ttl.as_ref(), config.default_ttl, config.max_ttl)?;
        self.leases.fulfil(&self.store, &entry.key, None, Bytes::from(entry.value), ttl, entry.tags)
    }
}

#[tonic::async_trait]
impl Cache for CacheGrpc {
    #[instrument(skip_all)]
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let key = request.into_inner().key;
        check_key(&key).map_err(|e| status(&e))?;
        let response = match self.store.get(&key) {
            Some(value) => pb::GetResponse {
                found: true,
                tags: tag_strings(&value),
                expire_time: Some(timestamp_at(value.expires_at)),
                value: value.value.to_vec(),
            },
            None => pb::GetResponse::default(),
        };
        Ok(Response::new(response))
    }

    #[instrument(skip_all)]
    async fn set(&self, request: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        let ttl = ttl_from_wire(request.ttl.as_ref(), config.default_ttl, config.max_ttl).map_err(|e| status(&e))?;
        let lease_id = (!request.lease_id.is_empty()).then_some(request.lease_id.as_str());
        self.leases
            .fulfil(&self.store, &request.key, lease_id, Bytes::from(request.value), ttl, request.tags)
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::SetResponse { expire_time: Some(timestamp_at(Instant::now() + ttl)) }))
    }

    #[instrument(skip_all)]
    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let key = request.into_inner().key;
        check_key(&key).map_err(|e| status(&e))?;
        Ok(Response::new(pb::DeleteResponse { deleted: self.store.delete(&key) }))
    }

    #[instrument(skip_all, fields(key_count))]
    async fn get_many(&self, request: Request<pb::GetManyRequest>) -> Result<Response<pb::GetManyResponse>, Status> {
        let keys = request.into_inner().keys;
        tracing::Span::current().record("key_count", keys.len());
        check_batch_size(keys.len(), &self.settings()).map_err(|e| status(&e))?;
        let entries = keys
            .into_iter()
            .map(|key| {
                if let Err(error) = check_key(&key) {
                    return pb::GetManyEntry { result: Some(item(key.clone(), Err(error))), key, ..Default::default() };
                }
                let found = self.store.get(&key);
                pb::GetManyEntry {
                    found: found.is_some(),
                    tags: found.as_ref().map(tag_strings).unwrap_or_default(),
                    expire_time: found.as_ref().map(|v| timestamp_at(v.expires_at)),
                    value: found.map(|v| v.value.to_vec()).unwrap_or_default(),
                    result: Some(item(key.clone(), Ok(()))),
                    key,
                }
            })
            .collect();
        Ok(Response::new(pb::GetManyResponse { entries }))
    }

    #[instrument(skip_all, fields(key_count))]
    async fn set_many(&self, request: Request<pb::SetManyRequest>) -> Result<Response<pb::SetManyResponse>, Status> {
        let config = self.settings();
        let entries = request.into_inner().entries;
        tracing::Span::current().record("key_count", entries.len());
        check_batch_size(entries.len(), &config).map_err(|e| status(&e))?;
        let mut stored_count = 0;
        let results = entries
            .into_iter()
            .map(|entry| {
                let key = entry.key.clone();
                let result = self.store_entry(entry, &config);
                stored_count += u64::from(result.is_ok());
                item(key, result)
            })
            .collect();
        Ok(Response::new(pb::SetManyResponse { results, stored_count }))
    }

    #[instrument(skip_all, fields(key_count))]
    async fn delete_many(
        &self,
        request: Request<pb::DeleteManyRequest>,
    ) -> Result<Response<pb::DeleteManyResponse>, Status> {
        let keys = request.into_inner().keys;
        tracing::Span::current().record("key_count", keys.len());
        check_batch_size(keys.len(), &self.settings()).map_err(|e| status(&e))?;
        let mut deleted_count = 0;
        let results = keys
            .into_iter()
            .map(|key| {
                let result = check_key(&key);
                if result.is_ok() {
                    deleted_count += u64::from(self.store.delete(&key));
                }
                item(key, result)
            })
            .collect();
        Ok(Response::new(pb::DeleteManyResponse { results, deleted_count }))
    }

    #[instrument(skip_all)]
    async fn invalidate_tags(
        &self,
        request: Request<pb::InvalidateTagsRequest>,
    ) -> Result<Response<pb::InvalidateTagsResponse>, Status> {
        let tags = request.into_inner().tags;
        if tags.is_empty() || tags.iter().any(String::is_empty) {
            return Err(status(&CacheError::InvalidPattern { reason: "give at least one non-empty tag".to_owned() }));
        }
        check_batch_size(tags.len(), &self.settings()).map_err(|e| status(&e))?;
        let store = self.store.clone();
        let removed_count = tokio::task::spawn_blocking(move || store.invalidate_tags(&tags))
            .await
            .map_err(|e| status(&CacheError::Internal { reason: e.to_string() }))?;
        Ok(Response::new(pb::InvalidateTagsResponse { removed_count }))
    }

    #[instrument(skip_all)]
    async fn invalidate_pattern(
        &self,
        request: Request<pb::InvalidatePatternRequest>,
    ) -> Result<Response<pb::InvalidatePatternResponse>, Status> {
        let request = request.into_inner();
        let pattern = match request.syntax() {
            pb::PatternSyntax::Unspecified | pb::PatternSyntax::Glob => KeyPattern::glob(&request.pattern),
            pb::PatternSyntax::Regex => KeyPattern::regex(&request.pattern),
        }
        .map_err(|e| status(&e))?;
        // The scan is O(keys); off the async workers so other calls keep flowing.
        let store = self.store.clone();
        let removed_count = tokio::task::spawn_blocking(move || store.invalidate_matching(&pattern))
            .await
            .map_err(|e| status(&CacheError::Internal { reason: e.to_string() }))?;
        Ok(Response::new(pb::InvalidatePatternResponse { removed_count }))
    }

    #[instrument(skip_all)]
    async fn warm(&self, request: Request<Streaming<pb::WarmRequest>>) -> Result<Response<pb::WarmResponse>, Status> {
        let mut batches = request.into_inner();
        let mut response = pb::WarmResponse::default();
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let config = self.settings();
            check_batch_size(batch.entries.len(), &config).map_err(|e| status(&e))?;
            for entry in batch.entries {
                if !batch.overwrite && !entry.key.is_empty() && self.store.contains_live(&entry.key) {
                    response.skipped_count += 1;
                    continue;
                }
                let key = entry.key.clone();
                match self.store_entry(entry, &config) {
                    Ok(()) => response.loaded_count += 1,
                    Err(error) => response.rejected.push(item(key, Err(error))),
                }
            }
        }
        Ok(Response::new(response))
    }

    #[instrument(skip_all)]
    async fn get_or_lease(
        &self,
        request: Request<pb::GetOrLeaseRequest>,
    ) -> Result<Response<pb::GetOrLeaseResponse>, Status> {
        let config = self.settings();
        let request = request.into_inner();
        check_key(&request.key).map_err(|e| status(&e))?;
        let lease_ttl = ttl_from_wire(request.lease_ttl.as_ref(), config.default_lease_ttl, config.max_lease_ttl)
            .map_err(|e| status(&e))?;
        let max_wait = request
            .max_wait
            .and_then(|wait| Duration::try_from(wait).ok())
            .unwrap_or_default()
            .min(config.max_lease_wait);
        let outcome =
            self.leases.get_or_lease(&self.store, &request.key, lease_ttl, max_wait).await.map_err(|e| status(&e))?;
        let response = match outcome {
            LeaseOutcome::Hit(value) => found_response(pb::LeaseOutcome::Hit, &value),
            LeaseOutcome::Filled(value) => found_response(pb::LeaseOutcome::Filled, &value),
            LeaseOutcome::Leased { lease_id, lease_expires_at } => pb::GetOrLeaseResponse {
                outcome: pb::LeaseOutcome::Leased.into(),
                lease_id,
                lease_expire_time: Some(timestamp_at(lease_expires_at)),
                ..Default::default()
            },
            LeaseOutcome::RetryLater { retry_after } => pb::GetOrLeaseResponse {
                outcome: pb::LeaseOutcome::Retry.into(),
                retry_after: prost_types::Duration::try_from(retry_after).ok(),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    #[instrument(skip_all)]
    async fn release_lease(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        let request = request.into_inner();
        check_key(&request.key).map_err(|e| status(&e))?;
        self.leases.release(&request.key, &request.lease_id).map_err(|e| status(&e))?;
        Ok(Response::new(pb::ReleaseLeaseResponse {}))
    }

    #[instrument(skip_all)]
    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let stats = self.store.stats();
        Ok(Response::new(pb::GetStatsResponse {
            hits: stats.hits,
            misses: stats.misses,
            hit_ratio: stats.hit_ratio,
            evictions: stats.evictions,
            expirations: stats.expirations,
            entries: stats.entries,
            memory_used_bytes: stats.bytes,
            memory_budget_bytes: stats.memory_budget_bytes,
            max_entries: stats.max_entries,
            tag_counts: stats.tag_counts.into_iter().map(|(tag, key_count)| pb::TagCount { tag, key_count }).collect(),
            active_leases: self.leases.len() as u64,
        }))
    }

    #[instrument(skip_all)]
    async fn get_health(
        &self,
        _request: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::GetHealthResponse>, Status> {
        let config = self.settings();
        let HealthReport { healthy, reasons, memory_used_ratio, hit_ratio } = assess(&self.store.stats(), &config);
        let state = if healthy { pb::HealthState::Healthy } else { pb::HealthState::Degraded };
        Ok(Response::new(pb::GetHealthResponse {
            state: state.into(),
            reasons,
            memory_used_ratio,
            hit_ratio,
            min_hit_ratio: config.min_hit_ratio,
        }))
    }
}

fn found_response(outcome: pb::LeaseOutcome, value: &CachedValue) -> pb::GetOrLeaseResponse {
    pb::GetOrLeaseResponse {
        outcome: outcome.into(),
        tags: tag_strings(value),
        expire_time: Some(timestamp_at(value.expires_at)),
        value: value.value.to_vec(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_checked_against_the_settings() {
        let config = CacheConfig::default();
        let wire = |seconds, nanos| prost_types::Duration { seconds, nanos };
        let (default, max) = (config.default_ttl, config.max_ttl);
        assert_eq!(ttl_from_wire(None, default, max), Ok(config.default_ttl));
        assert_eq!(ttl_from_wire(Some(&wire(5, 500_000_000)), default, max), Ok(Duration::from_millis(5500)));
        for bad in [wire(0, 0), wire(-1, 0), wire(0, -5), wire(i64::MAX, 0), wire(1, 2_000_000_000)] {
            let error = ttl_from_wire(Some(&bad), default, max).unwrap_err();
            assert_eq!(error.reason(), "INVALID_TTL", "{bad:?}");
        }
    }
}
