//! [`TestMesh`]: `mesh up` as a child process on ephemeral ports, ready when
//! the gateway's aggregated health says SERVING (never after a sleep).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_proto::cache::v1::cache_client::CacheClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a mesh may take to print its endpoints and report healthy.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `mesh up`, killed when dropped.
pub(crate) struct TestMesh {
    child: Child,
    _data_dir: tempfile::TempDir,
    /// `127.0.0.1:PORT` of the gateway.
    pub(crate) gateway_addr: String,
    /// Every line the child wrote to stdout, and to stderr when captured.
    output_lines: Arc<Mutex<Vec<String>>>,
}

impl TestMesh {
    /// Starts the mesh on embedded defaults.
    pub(crate) async fn start() -> Self {
        Self::start_with_env(&[]).await
    }

    /// Starts the mesh with extra environment variables for the child only.
    pub(crate) async fn start_with_env(env: &[(&str, &str)]) -> Self {
        Self::start_with_output(env, false).await
    }

    /// Starts the mesh with extra environment variables, keeping its stderr
    /// as well as its stdout in [`TestMesh::output_lines`] (tests that read
    /// the logs; otherwise stderr goes to the test's own).
    pub(crate) async fn start_capturing_stderr(env: &[(&str, &str)]) -> Self {
        Self::start_with_output(env, true).await
    }

    async fn start_with_output(env: &[(&str, &str)], capture_stderr: bool) -> Self {
        // Each mesh keeps its databases in a directory of its own, removed on drop.
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        let mut command = Command::new(env!("CARGO_BIN_EXE_mesh"));
        command
            .args(["up", "--gateway-listen", "127.0.0.1:0", "--services-base-port", "0"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "warn")
            .env("MESH_VPNUSERS_DATA_DIR", data_dir.path())
            .env("MESH_BULKOPS_DATA_DIR", data_dir.path())
            .stdout(Stdio::piped())
            .stderr(if capture_stderr { Stdio::piped() } else { Stdio::inherit() })
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the mesh binary starts");
        let output_lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let output_lines = Arc::clone(&output_lines);
            let mut stderr_lines = BufReader::new(stderr).lines();
            tokio::spawn(async move {
                while let Ok(Some(line)) = stderr_lines.next_line().await {
                    output_lines.lock().unwrap().push(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let (mut gateway_addr, mut cache_printed) = (None, false);
        tokio::time::timeout(STARTUP_TIMEOUT, async {
            while gateway_addr.is_none() || !cache_printed {
                let line =
                    lines.next_line().await.expect("read stdout").expect("mesh exited before printing endpoints");
                output_lines.lock().unwrap().push(line.clone());
                let mut words = line.split_whitespace();
                match (words.next(), words.next()) {
                    (Some("gateway"), Some(url)) => gateway_addr = Some(url.trim_start_matches("http://").to_owned()),
                    (Some("cache"), Some(_)) => cache_printed = true,
                    _ => {}
                }
            }
        })
        .await
        .expect("mesh printed its endpoints in time");
        // Keep draining stdout so the child never blocks on a full pipe.
        let stdout_lines = Arc::clone(&output_lines);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                stdout_lines.lock().unwrap().push(line);
            }
        });
        let mesh = Self { child, _data_dir: data_dir, gateway_addr: gateway_addr.unwrap(), output_lines };
        mesh.wait_until_serving().await;
        mesh
    }

    async fn wait_until_serving(&self) {
        let mut health = HealthClient::new(self.channel().await);
        tokio::time::timeout(STARTUP_TIMEOUT, async {
            loop {
                let status = health.check(HealthCheckRequest { service: String::new() }).await;
                if status.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the gateway reports SERVING");
    }

    /// A channel to the gateway.
    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.gateway_addr))
            .expect("valid uri")
            .connect()
            .await
            .expect("the gateway accepts connections")
    }

    /// A Cache client through the gateway.
    pub(crate) async fn cache(&self) -> CacheClient<Channel> {
        CacheClient::new(self.channel().await)
    }

    /// The child's process id, to read its `/proc` entries.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("the mesh is running")
    }

    /// What the child wrote so far after its endpoints: stdout, and stderr
    /// when started with [`TestMesh::start_capturing_stderr`].
    pub(crate) fn output_lines(&self) -> Vec<String> {
        self.output_lines.lock().unwrap().clone()
    }

    /// Stops the mesh with SIGTERM and waits for it to exit.
    pub(crate) async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running");
        let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs");
        assert!(killed.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("exits in time").expect("wait")
    }
}

/// Adds `x-correlation-id` to a request.
pub(crate) fn with_correlation_id<T>(message: T, correlation_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-correlation-id", correlation_id.parse().expect("ascii id"));
    request
}
