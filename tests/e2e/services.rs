//! Every service of `mesh up`, called through the gateway with its
//! generated client: the whole mesh works from one endpoint.

use mesh_proto::docker::v1 as docker;
use mesh_proto::docker::v1::docker_ops_client::DockerOpsClient;
use mesh_proto::memory::v1 as memory;
use mesh_proto::memory::v1::memory_profiler_client::MemoryProfilerClient;
use mesh_proto::virtualmin::v1 as virtualmin;
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;
use mesh_proto::vpnusers::v1 as vpnusers;
use mesh_proto::vpnusers::v1::vpn_users_client::VpnUsersClient;
use tonic::Code;

use crate::harness::TestMesh;

#[tokio::test]
async fn virtualmin_answers_from_the_simulator_mesh_up_started() {
    let mesh = TestMesh::start().await;
    let mut client = VirtualminGatewayClient::new(mesh.channel().await);
    let request = virtualmin::ListDomainsRequest { server_id: "simulator".into(), page_size: 5, ..Default::default() };
    let page = client.list_domains(request).await.expect("ListDomains through the gateway").into_inner();
    assert_eq!(page.domains.len(), 5);
    assert!(!page.next_page_token.is_empty(), "the seeded data set has more than one page");
}

#[tokio::test]
async fn vpn_users_are_created_and_read_back_through_the_gateway() {
    let mesh = TestMesh::start().await;
    let mut client = VpnUsersClient::new(mesh.channel().await);
    let new_user = vpnusers::NewUser {
        username: "e2e-alice".into(),
        email: "alice@example.com".into(),
        protocol: vpnusers::VpnProtocol::Wireguard.into(),
        ..Default::default()
    };
    let created = client
        .create_users(vpnusers::CreateUsersRequest { users: vec![new_user], ..Default::default() })
        .await
        .expect("CreateUsers")
        .into_inner();
    let user = created.results[0].user.clone().expect("the created user is returned");
    let fetched = client.get_user(vpnusers::GetUserRequest { id: user.id.clone() }).await.expect("GetUser");
    assert_eq!(fetched.into_inner().user.expect("a user").username, "e2e-alice");

    let missing = client.get_user(vpnusers::GetUserRequest { id: uuid::Uuid::now_v7().to_string() }).await;
    assert_eq!(missing.expect_err("unknown id").code(), Code::NotFound);
}

#[tokio::test]
async fn docker_ops_reports_the_engine_through_the_gateway() {
    let mesh = TestMesh::start().await;
    let mut client = DockerOpsClient::new(mesh.channel().await);
    let health = client.health(docker::HealthRequest {}).await.expect("Health answers either way").into_inner();
    assert_eq!(health.engine_reachable, !health.engine_version.is_empty());
}

#[tokio::test]
async fn the_memory_profiler_snapshots_every_service_of_the_mesh() {
    let mesh = TestMesh::start().await;
    let mut client = MemoryProfilerClient::new(mesh.channel().await);
    let taken = client.trigger_snapshot(memory::TriggerSnapshotRequest::default()).await.expect("TriggerSnapshot");
    let mut services: Vec<String> = taken.into_inner().snapshots.into_iter().map(|s| s.service).collect();
    services.sort();
    assert_eq!(services, ["bulkops", "cache", "docker", "memory", "virtualmin", "vpnusers"]);
}

#[tokio::test]
async fn memory_reports_list_the_top_heap_frames_of_services_that_profile() {
    let mesh = TestMesh::start_with_env(&[("MESH_SERVER_HEAP_PROFILING", "true")]).await;
    // Give the cache live allocations worth ranking.
    let mut cache = mesh.cache().await;
    for i in 0..2000 {
        let value = vec![u8::try_from(i % 251).unwrap(); 4096];
        let request = mesh_proto::cache::v1::SetRequest { key: format!("heap:{i}"), value, ..Default::default() };
        cache.set(request).await.expect("Set");
    }
    let mut client = MemoryProfilerClient::new(mesh.channel().await);
    let request = memory::GetReportRequest { services: vec!["cache".into()], include_heap_profiles: true };
    let report = client.get_report(request).await.expect("GetReport").into_inner().report.expect("a report");
    let cache_report = &report.services[0];
    assert_eq!(cache_report.heap_profile_error, "");
    let top = cache_report.top_frames.first().expect("top frames from the cache's heap profile");
    assert!(top.self_bytes > 0 && top.total_bytes >= top.self_bytes, "{top:?}");
    assert!(
        cache_report.top_frames.iter().all(|f| !f.function.is_empty() && !f.function.starts_with("_rjem_")),
        "{:?}",
        cache_report.top_frames
    );
}

#[tokio::test]
async fn memory_reports_say_why_a_service_has_no_heap_profile() {
    let mesh = TestMesh::start().await;
    let mut client = MemoryProfilerClient::new(mesh.channel().await);
    let request = memory::GetReportRequest { services: vec!["cache".into()], include_heap_profiles: true };
    let report = client.get_report(request).await.expect("GetReport").into_inner().report.expect("a report");
    let cache_report = &report.services[0];
    assert!(cache_report.top_frames.is_empty());
    assert!(
        cache_report.heap_profile_error.contains("MESH_SERVER_HEAP_PROFILING"),
        "{}",
        cache_report.heap_profile_error
    );
}
