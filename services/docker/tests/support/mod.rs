//! The harness of the `DockerOps` tests and bench: the offline test image
//! (`image`), a real `DockerOps` server on `127.0.0.1:0` with its generated
//! client, and guards that remove every container and image a test created,
//! even when it fails.
//!
//! Each harness gets its own namespace label (`mesh.test.ns=<uuid>`) as the
//! service's namespace label, so tests running in parallel never see each
//! other's containers, and cleanup removes exactly what this harness made.
//! The harnesses alive at a time share one image, which the last one to drop
//! removes (with any container still made from it).

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of the harness

pub mod image;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use mesh_kit::{CancellationToken, ConfigSource, Runtime, ServerSettings};
use mesh_proto::common::v1::ItemResult;
use mesh_proto::docker::v1 as pb;
use mesh_proto::docker::v1::docker_ops_client::DockerOpsClient;
use prost::Message;
use tonic::transport::Channel;

pub use self::image::TestImage;

/// The label key carrying a harness's namespace.
pub const NAMESPACE_KEY: &str = "mesh.test.ns";

/// Runs the docker CLI and returns its trimmed stdout; panics on failure.
pub fn docker_cli(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("run the docker CLI");
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes every container of one namespace when dropped, also on panic.
#[derive(Debug)]
pub struct CleanupGuard {
    namespace: String,
}

impl CleanupGuard {
    /// Removes the containers carrying `mesh.test.ns=<namespace>`.
    pub fn remove_all(&self) {
        let filter = format!("label={NAMESPACE_KEY}={}", self.namespace);
        let Ok(output) = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
        }
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Removes one container by id when dropped, for containers a test moved
/// out of its namespace.
#[derive(Debug)]
pub struct RemoveOnDrop(pub String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.0]).output();
    }
}

/// A `DockerOps` server on an ephemeral port, its client, and its cleanup.
#[derive(Debug)]
pub struct TestDockerOps {
    /// The generated client, connected to the server.
    pub client: DockerOpsClient<Channel>,
    /// The server's address.
    pub addr: SocketAddr,
    /// This harness's namespace (the value of `mesh.test.ns`).
    pub namespace: String,
    shutdown: CancellationToken,
    /// Dropped after the server was told to stop.
    pub cleanup: CleanupGuard,
    /// The image the containers run (busybox, sleeping, exits on SIGTERM);
    /// dropped after `cleanup`, so the last harness holding it removes it
    /// once this harness's containers are gone.
    image: Arc<TestImage>,
}

impl TestDockerOps {
    /// A server against the local engine, scoped to a fresh namespace.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A server with extra environment variables (e.g. `DOCKER_HOST`).
    pub async fn start_with(vars: &[(&str, &str)]) -> Self {
        let image = image::shared_image();
        let namespace = uuid::Uuid::now_v7().simple().to_string();
        let mut config_source =
            ConfigSource::default().with_var("MESH_DOCKER_NAMESPACE_LABEL", format!("{NAMESPACE_KEY}={namespace}"));
        for (name, value) in vars {
            config_source = config_source.with_var(*name, *value);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let runtime =
            Runtime { listener, server_settings: ServerSettings::default(), config_source, shutdown: shutdown.clone() };
        tokio::spawn(async move {
            if let Err(error) = mesh_docker::run(runtime).await {
                panic!("docker ops server failed: {error}");
            }
        });
        // The listener is bound already, so the connection is accepted as soon as the server runs.
        let client = DockerOpsClient::connect(format!("http://{addr}")).await.expect("connect to the server");
        Self { client, addr, cleanup: CleanupGuard { namespace: namespace.clone() }, namespace, shutdown, image }
    }

    /// The tag of the image this harness's containers run.
    pub fn image(&self) -> &str {
        self.image.tag()
    }

    /// The labels that put a container created by the CLI in this harness's namespace.
    pub fn namespace_label(&self) -> String {
        format!("{NAMESPACE_KEY}={}", self.namespace)
    }

    /// Creates `count` managed containers through the service; returns their ids.
    pub async fn create_managed(&mut self, count: usize, start: bool) -> Vec<String> {
        self.create_managed_on_network(count, start, "").await
    }

    /// Creates `count` managed containers on `network_mode` (empty: the
    /// engine's default bridge) through the service; returns their ids.
    pub async fn create_managed_on_network(&mut self, count: usize, start: bool, network_mode: &str) -> Vec<String> {
        let specs = (0..count)
            .map(|_| pb::ContainerSpec {
                image: self.image().to_owned(),
                start,
                network_mode: network_mode.to_owned(),
                ..Default::default()
            })
            .collect();
        let response = self
            .client
            .create_containers(pb::CreateContainersRequest { specs, max_concurrent: 10 })
            .await
            .expect("create containers")
            .into_inner();
        response
            .results
            .into_iter()
            .map(|result| {
                assert_ok(result.result.as_ref());
                result.container_id
            })
            .collect()
    }

    /// Creates a container with the CLI, in this namespace, with extra labels.
    pub fn create_with_cli(&self, labels: &[&str]) -> String {
        let mut args = vec!["create".to_owned(), "--label".to_owned(), self.namespace_label()];
        for label in labels {
            args.push("--label".to_owned());
            args.push((*label).to_owned());
        }
        args.push(self.image().to_owned());
        docker_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

impl Drop for TestDockerOps {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The gRPC code of a per-item result.
pub fn item_code(result: Option<&ItemResult>) -> tonic::Code {
    let status = result.and_then(|r| r.status.as_ref()).expect("every item carries a status");
    tonic::Code::from_i32(status.code)
}

/// The `ErrorInfo.reason` of a per-item result; empty when there is none.
pub fn item_reason(result: Option<&ItemResult>) -> String {
    let status = result.and_then(|r| r.status.as_ref()).expect("every item carries a status");
    status
        .details
        .iter()
        .filter(|any| any.type_url.ends_with("google.rpc.ErrorInfo"))
        .find_map(|any| tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).ok())
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// Asserts a per-item result is OK, showing its message when not.
pub fn assert_ok(result: Option<&ItemResult>) {
    let status = result.and_then(|r| r.status.as_ref()).expect("every item carries a status");
    assert_eq!(tonic::Code::from_i32(status.code), tonic::Code::Ok, "{}: {}", result.unwrap().item_id, status.message);
}

/// The `ErrorInfo.reason` of a call's status.
pub fn status_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

/// `docker inspect --format FORMAT ID`.
pub fn inspect(id: &str, format: &str) -> String {
    docker_cli(&["inspect", "--format", format, id])
}

/// The labels of a container, through the CLI.
pub fn labels_of(id: &str) -> HashMap<String, String> {
    let json = inspect(id, "{{json .Config.Labels}}");
    serde_json::from_str(&json).expect("labels are a JSON object")
}
