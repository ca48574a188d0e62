//! The world a BulkOps test runs in, all real: the Virtualmin simulator over
//! HTTP, the VirtualminGateway service in front of it, and BulkOps on a fresh
//! SQLite file or a fresh PostgreSQL database (on the server named by
//! `MESH_TEST_POSTGRES_URL`; without it the PostgreSQL half is skipped with a
//! note, except under CI where it fails). Jobs are awaited through WatchJob,
//! never with a sleep.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of the harness
#![allow(clippy::doc_markdown)] // product names are prose here, not code

use std::net::SocketAddr;
use std::time::Duration;

use mesh_kit::database::TestDatabase;
use mesh_kit::{CancellationToken, ConfigSource, DatabaseLocation, Runtime, ServerSettings};
use mesh_proto::bulkops::v1 as pb;
use mesh_proto::bulkops::v1::bulk_ops_client::BulkOpsClient;
use mesh_proto::virtualmin::v1 as vpb;
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;
use mesh_virtualmin_sim::{Simulator, SimulatorConfig};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// The simulator's server id in VirtualminGateway's configuration.
pub const SERVER: &str = "sim";

/// One test's database: the kit's [`TestDatabase`] with BulkOps' settings.
pub struct TestDb {
    database: TestDatabase,
    pub location: DatabaseLocation,
    pub backend_name: &'static str,
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    pub fn sqlite() -> Self {
        Self::from(TestDatabase::sqlite("bulkops.sqlite3"))
    }

    /// A new PostgreSQL database, or `None` when no server is configured.
    pub async fn postgres() -> Option<Self> {
        TestDatabase::postgres("bulkops_test").await.map(Self::from)
    }

    fn from(database: TestDatabase) -> Self {
        Self { location: database.location.clone(), backend_name: database.backend_name, database }
    }

    /// The variables pointing BulkOps at this database.
    pub fn vars(&self) -> Vec<(String, String)> {
        match &self.location {
            DatabaseLocation::SqliteFile(path) => {
                vec![("MESH_BULKOPS_DATA_DIR".to_owned(), path.parent().unwrap().to_string_lossy().into_owned())]
            }
            DatabaseLocation::Url(url) => vec![("MESH_BULKOPS_DATABASE_URL".to_owned(), url.expose().to_owned())],
        }
    }

    /// A connection to the job database, for tests that read or edit rows
    /// the API does not show.
    pub async fn connect(&self) -> sea_orm::DatabaseConnection {
        self.database.connect().await
    }

    /// Removes the PostgreSQL database (SQLite's directory goes on drop).
    pub async fn finish(self) {
        self.database.finish().await;
    }
}

/// The simulator and VirtualminGateway in front of it.
pub struct Virtualmin {
    pub simulator: Simulator,
    /// `http://127.0.0.1:PORT` of VirtualminGateway.
    pub url: String,
    shutdown: CancellationToken,
}

impl Virtualmin {
    /// A simulator with `domains` domains, and VirtualminGateway configured for it
    /// with room for bulk work (no rate limit in the way, `pool` connections).
    pub async fn start(domains: usize, pool: u32) -> Self {
        Self::start_with(domains, pool, &[]).await
    }

    /// As [`Virtualmin::start`], with extra VirtualminGateway variables (e.g. a rate limit).
    pub async fn start_with(domains: usize, pool: u32, extra: &[(&str, &str)]) -> Self {
        let shutdown = CancellationToken::new();
        let simulator = Simulator::new(SimulatorConfig { domain_count: domains, ..SimulatorConfig::default() });
        let sim_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_port = sim_listener.local_addr().unwrap().port();
        tokio::spawn(simulator.clone().serve(sim_listener, shutdown.clone()));
        let config_source = ConfigSource::default()
            .with_var(
                "VIRTUALMIN_SERVERS",
                format!("[{{id={SERVER},hostname=127.0.0.1,port={sim_port},scheme=http,username=root,password_env=SIM_PASSWORD}}]"),
            )
            .with_var("SIM_PASSWORD", "simulator")
            .with_var("VIRTUALMIN_RATE_LIMIT_MAX_CALLS", "1000000")
            .with_var("VIRTUALMIN_CONNECTION_POOL_SIZE", pool.to_string());
        let config_source = extra.iter().fold(config_source, |source, (name, value)| source.with_var(*name, *value));
        let url = serve(|rt| Box::pin(mesh_virtualmin::run(rt)), config_source, &shutdown).await;
        Self { simulator, url, shutdown }
    }

    /// A VirtualminGateway client.
    pub async fn client(&self) -> VirtualminGatewayClient<Channel> {
        VirtualminGatewayClient::connect(self.url.clone()).await.expect("VirtualminGateway accepts connections")
    }

    /// Every domain's (name, suspended, suspension reason), in listing order.
    pub async fn states(&self) -> Vec<(String, bool, String)> {
        let mut client = self.client().await;
        let mut states = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_domains(vpb::ListDomainsRequest {
                    server_id: SERVER.into(),
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("list domains")
                .into_inner();
            states.extend(page.domains.into_iter().map(|d| (d.name, d.suspended, d.suspension_reason)));
            if page.next_page_token.is_empty() {
                return states;
            }
            page_token = page.next_page_token;
        }
    }

    /// How many times `program` was called with `--domain <domain>`, per domain.
    pub fn calls_per_domain(&self, program: &str) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for call in self.simulator.call_log().into_iter().filter(|call| call.program == program) {
            if let Some(position) = call.argv.iter().position(|arg| arg == "--domain")
                && let Some(domain) = call.argv.get(position + 1)
            {
                *counts.entry(domain.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

impl Drop for Virtualmin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A BulkOps service in this process.
pub struct BulkOps {
    pub url: String,
    shutdown: CancellationToken,
}

impl BulkOps {
    /// BulkOps on `db`, calling `virtualmin`, with extra variables.
    pub async fn start(db: &TestDb, virtualmin: &Virtualmin, extra: &[(&str, &str)]) -> Self {
        let shutdown = CancellationToken::new();
        let mut source = ConfigSource::default()
            .with_var("MESH_BULKOPS_VIRTUALMIN_ENDPOINT", virtualmin.url.clone())
            .with_var("MESH_BULKOPS_POLL_INTERVAL", "0.1")
            .with_var("MESH_BULKOPS_BACKUP_POLL_INTERVAL", "0.05");
        for (name, value) in db.vars() {
            source = source.with_var(name, value);
        }
        for (name, value) in extra {
            source = source.with_var(*name, *value);
        }
        let url = serve(|rt| Box::pin(mesh_bulkops::run(rt)), source, &shutdown).await;
        Self { url, shutdown }
    }

    /// A client.
    pub async fn client(&self) -> BulkOpsClient<Channel> {
        BulkOpsClient::connect(self.url.clone()).await.expect("BulkOps accepts connections")
    }

    /// Stops the service gracefully.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for BulkOps {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

type Serve = fn(Runtime) -> std::pin::Pin<Box<dyn Future<Output = Result<(), mesh_kit::ServeError>> + Send>>;

async fn serve(run: Serve, config_source: ConfigSource, shutdown: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let runtime =
        Runtime { listener, server_settings: ServerSettings::default(), config_source, shutdown: shutdown.clone() };
    tokio::spawn(async move {
        if let Err(error) = run(runtime).await {
            panic!("service failed: {error}");
        }
    });
    format!("http://{address}")
}

/// A suspend request over `domains` of the simulator.
pub fn request(kind: pb::OperationKind, domains: &[String], mode: pb::BulkMode) -> pb::StartBulkOperationRequest {
    pb::StartBulkOperationRequest {
        kind: kind.into(),
        target_set: Some(pb::start_bulk_operation_request::TargetSet::TargetList(pb::TargetList {
            targets: domains
                .iter()
                .map(|domain| pb::Target { server_id: SERVER.into(), domain_name: domain.clone() })
                .collect(),
        })),
        mode: mode.into(),
        ..Default::default()
    }
}

/// Watches a job to its end; returns every message's results, in order, and the final job.
pub async fn watch_to_end(client: &mut BulkOpsClient<Channel>, job_id: &str) -> (Vec<pb::TargetResult>, pb::Job) {
    let mut stream =
        client.watch_job(pb::WatchJobRequest { job_id: job_id.to_owned() }).await.expect("watch").into_inner();
    let mut results = Vec::new();
    let mut last = None;
    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(message) = stream.message().await.expect("stream message") {
            results.extend(message.results);
            last = message.job;
        }
    })
    .await;
    outcome.expect("the job finished within two minutes");
    (results, last.expect("at least one message"))
}

/// The `ErrorInfo` reason of a status.
pub fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

/// Runs a test body against SQLite and against PostgreSQL, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::support::TestDb::sqlite();
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::support::TestDb::postgres().await else { return };
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

/// The environment variable that makes the re-executed test binary serve
/// BulkOps (see [`ChildBulkOps`]).
pub const CHILD_VAR: &str = "BULKOPS_TEST_CHILD_PROCESS";

/// BulkOps in a process of its own, so it can be killed with SIGKILL: this
/// test binary re-executed to run only its `bulkops_child` test, which serves
/// BulkOps with the variables given here and prints its address.
pub struct ChildBulkOps {
    child: std::process::Child,
    pub url: String,
}

impl ChildBulkOps {
    /// Starts BulkOps on `db`, calling `virtualmin`, with a 1 s lease so a
    /// successor takes a killed replica's jobs over quickly.
    pub fn spawn(db: &TestDb, virtualmin: &Virtualmin) -> Self {
        use std::io::BufRead as _;
        let executable = std::env::current_exe().expect("the test binary's path");
        let mut command = std::process::Command::new(executable);
        command
            .args(["--exact", "bulkops_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_VAR, "1")
            .env("RUST_LOG", "warn")
            .env("MESH_BULKOPS_VIRTUALMIN_ENDPOINT", &virtualmin.url)
            .env("MESH_BULKOPS_LEASE_DURATION", "1")
            .env("MESH_BULKOPS_POLL_INTERVAL", "0.1")
            .env("MESH_BULKOPS_BACKUP_POLL_INTERVAL", "0.05")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (name, value) in db.vars() {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the BulkOps child process starts");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let url = loop {
            let line = lines.next().expect("the child prints its address before exiting").expect("stdout line");
            // libtest writes `test bulkops_child ... ` before it on the same line.
            if let Some((_, url)) = line.split_once("bulkops listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining the child's stdout so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, url }
    }

    /// A client.
    pub async fn client(&self) -> BulkOpsClient<Channel> {
        BulkOpsClient::connect(self.url.clone()).await.expect("BulkOps accepts connections")
    }

    /// SIGKILL, then reaps the process: no shutdown code runs, leases stay held until they lapse.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("reap the child");
        assert!(!status.success(), "the child was killed, not exited: {status}");
    }
}

impl Drop for ChildBulkOps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the `bulkops_child` test runs when [`CHILD_VAR`] is set: BulkOps
/// configured from the process environment, serving until killed.
pub fn serve_as_child() {
    let source = ConfigSource::from_process();
    if source.var(CHILD_VAR).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "bulkops listening on http://{}", listener.local_addr().unwrap()).unwrap();
            stdout.flush().unwrap();
        }
        let runtime = Runtime {
            listener,
            server_settings: ServerSettings::default(),
            config_source: source,
            shutdown: CancellationToken::new(),
        };
        mesh_bulkops::run(runtime).await.expect("BulkOps serves until killed");
    });
}

/// Waits until `check` holds, looking again every 20 ms, for at most 60 s:
/// for states no event announces (targets issued, ids persisted).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}
