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
    assert_eq!(services, ["cache", "docker", "memory", "virtualmin", "vpnusers"]);
}
