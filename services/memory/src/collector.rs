//! Probing the watched services: one `MemoryIntrospection.GetMemoryStats`
//! call per service, over a lazily connected [`MeshChannel`], turned into a
//! domain [`Probe`]. With `grpc`, the only module that knows tonic and the proto.

use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use mesh_kit::allocator::AllocatorStats;
use mesh_kit::client::{MeshChannel, connect_lazy};
use mesh_kit::introspection::ProcessMemory;
use mesh_proto::memory::v1 as pb;
use mesh_proto::memory::v1::memory_introspection_client::MemoryIntrospectionClient;

use crate::snapshot::{MemoryReading, Probe};
use crate::target::ProfileTarget;

/// Clients for every watched service.
#[derive(Debug)]
pub struct Collector {
    clients: Vec<(String, MemoryIntrospectionClient<MeshChannel>)>,
    probe_timeout: Duration,
}

impl Collector {
    /// Prepares a client per target; nothing connects until the first probe,
    /// so a target that is down at start-up is just unreachable.
    pub fn new(targets: &[ProfileTarget], probe_timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let mut clients = Vec::with_capacity(targets.len());
        for target in targets {
            let channel = connect_lazy(&target.uri, probe_timeout)?;
            clients.push((target.name.clone(), MemoryIntrospectionClient::new(channel)));
        }
        Ok(Self { clients, probe_timeout })
    }

    /// The watched services, in configuration order.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.clients.iter().map(|(name, _)| name.as_str())
    }

    /// Probes `services` concurrently, each within the probe timeout, so
    /// one slow or dead service delays none of the others.
    pub async fn probe(&self, services: &[String]) -> Vec<(String, Probe)> {
        let probes = self
            .clients
            .iter()
            .filter(|(name, _)| services.contains(name))
            .map(|(name, client)| async move { (name.clone(), self.probe_one(client.clone()).await) });
        join_all(probes).await
    }

    /// Takes a gzipped pprof heap profile of each of `services`
    /// concurrently, each within `timeout`; a failure is its reason.
    pub async fn heap_profiles(
        &self,
        services: &[String],
        timeout: Duration,
    ) -> Vec<(String, Result<Vec<u8>, String>)> {
        let profiles =
            self.clients.iter().filter(|(name, _)| services.contains(name)).map(|(name, client)| async move {
                let mut client = client.clone();
                let mut request = tonic::Request::new(pb::HeapProfileRequest {});
                request.set_timeout(timeout);
                let outcome = answer_within(timeout, "no heap profile", client.heap_profile(request)).await;
                (name.clone(), outcome.map(|profile| profile.pprof_gzip))
            });
        join_all(profiles).await
    }

    async fn probe_one(&self, mut client: MemoryIntrospectionClient<MeshChannel>) -> Probe {
        let mut request = tonic::Request::new(pb::GetMemoryStatsRequest {});
        request.set_timeout(self.probe_timeout);
        match answer_within(self.probe_timeout, "no answer", client.get_memory_stats(request)).await {
            Ok(response) => reading_from_wire(response),
            Err(reason) => Probe::Unreachable { reason },
        }
    }
}

/// The answer of `call` within `timeout`, or why there is none: `"<silence>
/// within <timeout>"` or the status's code and message.
async fn answer_within<T>(
    timeout: Duration,
    silence: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Err(_elapsed) => Err(format!("{silence} within {timeout:?}")),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

fn reading_from_wire(response: pb::GetMemoryStatsResponse) -> Probe {
    let Some(process) = response.process else {
        return Probe::Unreachable { reason: "the service answered without process figures".to_owned() };
    };
    let read_time =
        process.read_time.and_then(|timestamp| SystemTime::try_from(timestamp).ok()).unwrap_or_else(SystemTime::now);
    Probe::Reached(MemoryReading {
        process: ProcessMemory {
            read_time,
            resident_bytes: process.resident_bytes,
            proportional_bytes: process.proportional_bytes,
            virtual_bytes: process.virtual_bytes,
            limit_bytes: process.limit_bytes,
        },
        allocator: response.allocator.map(|allocator| AllocatorStats {
            allocated_bytes: allocator.allocated_bytes,
            active_bytes: allocator.active_bytes,
            resident_bytes: allocator.resident_bytes,
            mapped_bytes: allocator.mapped_bytes,
            retained_bytes: allocator.retained_bytes,
        }),
        gauges: response.gauges.into_iter().map(|gauge| (gauge.name, gauge.value)).collect(),
    })
}
