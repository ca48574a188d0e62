//! Correlation ids through the gateway: a sent id is echoed and lands in the
//! `ErrorInfo` of a failed call; a missing id is minted.

use mesh_proto::cache::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{TestMesh, with_correlation_id};

#[tokio::test]
async fn a_sent_correlation_id_is_echoed() {
    let mesh = TestMesh::start().await;
    let mut cache = mesh.cache().await;
    let response = cache.get(with_correlation_id(pb::GetRequest { key: "k".into() }, "e2e-echo-1")).await.unwrap();
    assert_eq!(response.metadata().get("x-correlation-id").unwrap(), "e2e-echo-1");
}

#[tokio::test]
async fn a_failed_call_carries_the_correlation_id_in_error_info() {
    let mesh = TestMesh::start().await;
    let mut cache = mesh.cache().await;
    let request = pb::SetRequest { key: String::new(), value: b"v".to_vec(), ..Default::default() };
    let status = cache.set(with_correlation_id(request, "e2e-fail-7")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo attached");
    assert_eq!(info.reason, "EMPTY_KEY");
    assert_eq!(info.domain, "mesh.cache.v1");
    assert_eq!(info.metadata.get("correlation_id").map(String::as_str), Some("e2e-fail-7"));
    assert_eq!(status.metadata().get("x-correlation-id").unwrap(), "e2e-fail-7");
}

#[tokio::test]
async fn a_missing_correlation_id_is_minted_as_uuid_v7() {
    let mesh = TestMesh::start().await;
    let mut cache = mesh.cache().await;
    let response = cache.get(pb::GetRequest { key: "k".into() }).await.unwrap();
    let minted = response.metadata().get("x-correlation-id").expect("minted id").to_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(minted).expect("a uuid").get_version_num(), 7);
}

#[tokio::test]
async fn x_request_id_is_accepted_when_no_correlation_id_is_sent() {
    let mesh = TestMesh::start().await;
    let mut cache = mesh.cache().await;
    let mut request = tonic::Request::new(pb::GetRequest { key: "k".into() });
    request.metadata_mut().insert("x-request-id", "req-e2e-3".parse().unwrap());
    let response = cache.get(request).await.unwrap();
    assert_eq!(response.metadata().get("x-correlation-id").unwrap(), "req-e2e-3");
}

#[tokio::test]
async fn sigterm_stops_the_mesh_cleanly() {
    let mesh = TestMesh::start().await;
    let mut cache = mesh.cache().await;
    cache.set(pb::SetRequest { key: "k".into(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    let status = mesh.stop().await;
    assert!(status.success(), "mesh exited with {status}");
}
