//! Secrets never leave the mesh. A mesh is configured with secrets that carry
//! a recognisable marker — the Virtualmin password (through
//! `VIRTUALMIN_SERVERS`' `password_env`, against the simulator), the gateway
//! API token, a domain administrator password, a database URL's password —
//! and every RPC of every service (found through the gateway's reflection)
//! is called through the gateway, most of them failing, with tracing at
//! debug level and an OTLP receiver. No marker, and none of the plaintext
//! passwords the simulator's listings carry (as real Virtualmin's do), may
//! appear in any response, status message, `ErrorInfo`, log line or span.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use mesh_proto::virtualmin::v1 as vm;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

use crate::harness::TestMesh;
use crate::otlp::start_receiver;
use crate::raw_call::{CallEnd, finish_call_within, grpc_head, grpc_message, h2_connect};

/// In every secret below, and in nothing a caller sends as plain input.
const LEAK_MARKER: &str = "LEAKMARK";
const VIRTUALMIN_PASSWORD: &str = "vmpw-LEAKMARK-7f3a";
const WRONG_VIRTUALMIN_PASSWORD: &str = "vmbad-LEAKMARK-0c1d";
const API_TOKEN: &str = "tok-LEAKMARK-91c2";
const WRONG_API_TOKEN: &str = "badtok-LEAKMARK-4e";
const DOMAIN_PASSWORD: &str = "dompw-LEAKMARK-55";
const DATABASE_PASSWORD: &str = "pgpw-LEAKMARK-2b";

/// The Virtualmin simulator as a child process, killed when dropped.
struct Simulator {
    _child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
}

async fn start_simulator(password: &str) -> Simulator {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["virtualmin-sim", "--listen", "127.0.0.1:0", "--domains", "8", "--password", password])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the simulator starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the simulator prints its address in time")
        .expect("read stdout")
        .expect("the simulator printed its address");
    let addr = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("http://"))
        .expect("`virtualmin-sim  http://ADDR`")
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Simulator { _child: child, addr }
}

/// The plaintext passwords the simulator's `list-domains` carries, read
/// straight from its `remote.cgi` as the `VirtualminGateway` would.
async fn simulator_listing_passwords(simulator: &Simulator) -> Vec<String> {
    let form = "program=list-domains&multiline=&json=1";
    let credentials =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("root:{VIRTUALMIN_PASSWORD}"));
    let request = format!(
        "POST /virtual-server/remote.cgi HTTP/1.0\r\nHost: {}\r\nAuthorization: Basic {credentials}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        simulator.addr,
        form.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(&simulator.addr).await.expect("the simulator accepts");
    tcp.write_all(request.as_bytes()).await.expect("request sent");
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await.expect("reply read");
    let reply = String::from_utf8(reply).expect("the reply is text");
    let (_head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let listing: serde_json::Value = serde_json::from_str(body).expect("list-domains is JSON");
    let mut passwords = Vec::new();
    for domain in listing["data"].as_array().expect("a data array") {
        for (key, values) in domain["values"].as_object().expect("values") {
            if key.starts_with("password") && key != "password_storage" {
                passwords.extend(values.as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(str::to_owned));
            }
        }
    }
    passwords.retain(|password| password.len() >= 6);
    passwords
}

/// Hex SHA-256, as `[[gateway.tokens]]` names a token.
pub(crate) fn sha256_hex(text: &str) -> String {
    use std::fmt::Write as _;

    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes()).iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// One method of a service, as reflection describes it.
#[derive(Debug)]
struct Method {
    path: String,
    client_streaming: bool,
}

/// Every method of every service the gateway routes or serves, through its reflection.
async fn every_method(mesh: &TestMesh) -> Vec<Method> {
    let reflection = ServerReflectionClient::new(mesh.channel().await);
    let ask = |message_request| ServerReflectionRequest { host: String::new(), message_request: Some(message_request) };
    let answers = |request: ServerReflectionRequest| {
        let mut reflection = reflection.clone();
        async move {
            let mut stream = reflection
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect("reflection answers")
                .into_inner();
            let answer: ServerReflectionResponse = stream.message().await.expect("a reply").expect("one reply");
            answer.message_response.expect("a response")
        }
    };
    let MessageResponse::ListServicesResponse(listed) = answers(ask(MessageRequest::ListServices(String::new()))).await
    else {
        panic!("list_services answers a service list");
    };
    let mut methods = Vec::new();
    for service in listed.service {
        let MessageResponse::FileDescriptorResponse(files) =
            answers(ask(MessageRequest::FileContainingSymbol(service.name.clone()))).await
        else {
            panic!("reflection describes {}", service.name);
        };
        for encoded in files.file_descriptor_proto {
            let file = prost_types::FileDescriptorProto::decode(encoded.as_slice()).expect("a file descriptor");
            for described in &file.service {
                if format!("{}.{}", file.package(), described.name()) != service.name {
                    continue;
                }
                for method in &described.method {
                    methods.push(Method {
                        path: format!("/{}/{}", service.name, method.name()),
                        client_streaming: method.client_streaming(),
                    });
                }
            }
        }
    }
    methods.sort_by(|a, b| a.path.cmp(&b.path));
    methods.dedup_by(|a, b| a.path == b.path);
    methods
}

/// A protobuf message with string fields 1 and 2 set: for most requests the
/// server (or key, or name) and the object the call is about.
fn fields_one_and_two(first: &str, second: &str) -> Vec<u8> {
    let mut message = Vec::new();
    for (tag, text) in [(0x0a_u8, first), (0x12, second)] {
        message.push(tag);
        message.push(u8::try_from(text.len()).expect("a short field"));
        message.extend_from_slice(text.as_bytes());
    }
    message
}

/// Calls `path` with `message` through the gateway, as the API token's holder.
async fn call(
    mesh: &TestMesh,
    path: &str,
    message: &[u8],
    headers: &[(&str, &str)],
    client_streaming: bool,
) -> CallEnd {
    let (mut send_request, _connection) = h2_connect(mesh).await;
    let mut head = grpc_head(mesh, path).header("grpc-timeout", "3S");
    for (name, value) in headers {
        head = head.header(*name, *value);
    }
    let (response, mut stream) =
        send_request.send_request(head.body(()).expect("a valid head"), false).expect("the request is sent");
    // A client stream gets the message twice, so it is read as a stream.
    let body = if client_streaming {
        Bytes::from([grpc_message(message), grpc_message(message)].concat())
    } else {
        grpc_message(message)
    };
    let _ = stream.send_data(body, true);
    // Server streams (`Watch*`) run on past their deadline: what came in 5 s is searched.
    let (answer, _cut) = finish_call_within(response, Duration::from_secs(5)).await;
    answer
}

/// Fails with every place `secret` was found in `text`.
fn assert_no_secret(secrets: &[String], text: &str, place: &str) {
    for secret in secrets {
        assert!(!text.contains(secret.as_str()), "{place} leaked `{secret}`: {text}");
    }
    assert!(!text.contains(LEAK_MARKER), "{place} leaked the marker: {text}");
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one scenario: configure, call everything, search everything
async fn no_secret_leaves_the_mesh_through_any_rpc_log_or_span() {
    let simulator = start_simulator(VIRTUALMIN_PASSWORD).await;
    let listing_passwords = simulator_listing_passwords(&simulator).await;
    assert!(!listing_passwords.is_empty(), "the simulator lists plaintext passwords");

    let (receiver_addr, sink) = start_receiver().await;
    let config_dir = tempfile::tempdir().expect("a config directory");
    let config_path = config_dir.path().join("mesh.toml");
    std::fs::write(
        &config_path,
        format!(
            "[gateway]\n\n[[gateway.tokens]]\nname = \"secrets-test\"\nsha256 = \"{}\"\nallow = [\"*\"]\n",
            sha256_hex(API_TOKEN)
        ),
    )
    .expect("config written");
    let (sim_host, sim_port) = simulator.addr.rsplit_once(':').expect("host:port");
    let servers = format!(
        "[{{id=vm,hostname={sim_host},port={sim_port},scheme=http,username=root,password_env=MESH_TEST_VM_PASSWORD}},\
         {{id=vm-wrong,hostname={sim_host},port={sim_port},scheme=http,username=root,password_env=MESH_TEST_VM_WRONG_PASSWORD}}]"
    );
    let otlp_endpoint = format!("http://{receiver_addr}");
    let mesh = TestMesh::start_capturing_stderr(&[
        ("MESH_CONFIG", config_path.to_str().expect("a UTF-8 path")),
        ("VIRTUALMIN_SERVERS", servers.as_str()),
        ("MESH_TEST_VM_PASSWORD", VIRTUALMIN_PASSWORD),
        ("MESH_TEST_VM_WRONG_PASSWORD", WRONG_VIRTUALMIN_PASSWORD),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "debug"),
    ])
    .await;

    let bearer = format!("Bearer {API_TOKEN}");
    let authorized = [("authorization", bearer.as_str())];
    // A domain the simulator really has, so calls about it get this far.
    let listed = call(
        &mesh,
        "/mesh.virtualmin.v1.VirtualminGateway/ListDomains",
        &vm::ListDomainsRequest { server_id: "vm".into(), ..Default::default() }.encode_to_vec(),
        &authorized,
        false,
    )
    .await;
    assert_eq!(listed.grpc_status, Some(0), "ListDomains works with the right token: {listed:?}");
    let listed_domains =
        vm::ListDomainsResponse::decode(listed.body.get(5..).unwrap_or_default()).expect("a ListDomainsResponse");
    let existing_domain = listed_domains.domains.first().expect("the simulator has domains").name.clone();

    let mut answers: Vec<(String, CallEnd)> = Vec::new();
    // Calls that carry secrets inward: a domain password set and changed, a
    // server whose password is wrong, and tokens that are wrong or sent as an API key.
    let create = vm::CreateDomainRequest {
        server_id: "vm".into(),
        domain_name: "leak-test.example.com".into(),
        password: DOMAIN_PASSWORD.into(),
        ..Default::default()
    };
    let modify = vm::ModifyDomainRequest {
        server_id: "vm".into(),
        domain_name: "leak-test.example.com".into(),
        new_password: format!("{DOMAIN_PASSWORD}-2"),
        ..Default::default()
    };
    let virtualmin = "/mesh.virtualmin.v1.VirtualminGateway";
    for (path, message) in [
        (format!("{virtualmin}/CreateDomain"), create.encode_to_vec()),
        (format!("{virtualmin}/CreateDomain"), create.encode_to_vec()),
        (format!("{virtualmin}/ModifyDomain"), modify.encode_to_vec()),
        (format!("{virtualmin}/GetDomain"), fields_one_and_two("vm", "leak-test.example.com")),
        (format!("{virtualmin}/ListDomains"), fields_one_and_two("vm-wrong", "")),
        (format!("{virtualmin}/CheckServerHealth"), fields_one_and_two("vm-wrong", "")),
    ] {
        let answer = call(&mesh, &path, &message, &authorized, false).await;
        answers.push((path, answer));
    }
    let wrong_bearer = format!("Bearer {WRONG_API_TOKEN}");
    let cache_get = "/mesh.cache.v1.Cache/Get".to_owned();
    for headers in [
        [("authorization", wrong_bearer.as_str())],
        [("x-api-key", WRONG_API_TOKEN)],
        [("x-api-key", API_TOKEN)],
        [("authorization", API_TOKEN)],
    ] {
        let answer = call(&mesh, &cache_get, &fields_one_and_two("k", ""), &headers, false).await;
        answers.push((cache_get.clone(), answer));
    }

    // Every method of every service: empty, with field 1 a server id, with
    // fields 1 and 2 a server id and a domain. Most of these fail.
    let methods = every_method(&mesh).await;
    assert!(methods.len() > 40, "reflection lists every method: {methods:?}");
    for method in &methods {
        for message in [Vec::new(), fields_one_and_two("vm", ""), fields_one_and_two("vm", &existing_domain)] {
            let answer = call(&mesh, &method.path, &message, &authorized, method.client_streaming).await;
            answers.push((method.path.clone(), answer));
        }
    }
    let delete = vm::DeleteDomainRequest { server_id: "vm".into(), domain_name: "leak-test.example.com".into() };
    let last = call(&mesh, &format!("{virtualmin}/DeleteDomain"), &delete.encode_to_vec(), &authorized, false).await;
    answers.push(("DeleteDomain".into(), last));

    let mut secrets: Vec<String> = listing_passwords.clone();
    secrets.extend(
        [VIRTUALMIN_PASSWORD, WRONG_VIRTUALMIN_PASSWORD, API_TOKEN, WRONG_API_TOKEN, DOMAIN_PASSWORD].map(String::from),
    );
    let failed = answers.iter().filter(|(_, answer)| answer.grpc_status != Some(0)).count();
    println!("{} calls over {} methods, {failed} failed", answers.len(), methods.len());
    assert!(failed > methods.len(), "most calls fail, so error paths are covered");
    for (path, answer) in &answers {
        assert_no_secret(&secrets, &answer.received_text(), &format!("the answer of {path}"));
    }

    // Spans: wait until the receiver has the last call's gateway span, then search them all.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let has_last = sink.spans.lock().unwrap().iter().any(|span| span.name.ends_with("/DeleteDomain"));
            if has_last {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the spans are exported");
    let spans = sink.spans.lock().unwrap().clone();
    assert!(spans.len() > methods.len(), "spans of every call were exported: {}", spans.len());
    for span in &spans {
        assert_no_secret(&secrets, &format!("{span:?}"), "an exported span");
    }

    let log_lines = mesh.output_lines();
    assert!(log_lines.len() > answers.len(), "debug logs were captured: {} lines", log_lines.len());
    for line in &log_lines {
        assert_no_secret(&secrets, line, "a log line");
    }
}

#[tokio::test]
async fn a_database_url_password_is_never_printed() {
    // Nothing listens on port 9: VpnUsers cannot open its database and the mesh stops.
    let url = format!("postgres://mesh:{DATABASE_PASSWORD}@127.0.0.1:9/mesh");
    let data_dir = tempfile::tempdir().expect("a data directory");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(["up", "--gateway-listen", "127.0.0.1:0", "--services-base-port", "0"])
            .env("DATABASE_URL", &url)
            .env("MESH_VPNUSERS_CONNECT_TIMEOUT", "2")
            .env("MESH_VPNUSERS_DATA_DIR", data_dir.path())
            .env("MESH_BULKOPS_DATA_DIR", data_dir.path())
            .env("RUST_LOG", "debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the mesh stops when its database is unreachable")
    .expect("the mesh runs");
    assert!(!output.status.success(), "the mesh cannot run without its database");
    let printed = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("127.0.0.1:9"), "the error names the database: {printed}");
    assert_no_secret(&[DATABASE_PASSWORD.to_owned()], &printed, "mesh up's output");
}

/// The password of the PostgreSQL role the serving mesh logs in as.
const SERVING_DATABASE_PASSWORD: &str = "pgok-LEAKMARK-6d0f";

/// A PostgreSQL role whose password is [`SERVING_DATABASE_PASSWORD`] and two
/// databases it owns, made through the admin URL; dropped by [`LeakRole::drop_all`].
struct LeakRole {
    admin: sea_orm::DatabaseConnection,
    role: String,
    databases: Vec<String>,
    /// `host:port` of the server.
    server: String,
}

impl LeakRole {
    /// Makes the role and a database for each of `purposes`. `Err` names why
    /// it could not (the admin may not create roles).
    async fn create(admin_url: &str, purposes: &[&str]) -> Result<Self, String> {
        use sea_orm::ConnectionTrait as _;

        let admin = sea_orm::Database::connect(admin_url).await.map_err(|error| format!("connect: {error}"))?;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let role = format!("mesh_leak_{suffix}");
        admin
            .execute_unprepared(&format!("CREATE ROLE {role} LOGIN PASSWORD '{SERVING_DATABASE_PASSWORD}'"))
            .await
            .map_err(|error| format!("the admin role cannot create roles ({error}); grant it CREATEROLE"))?;
        // Membership lets the admin make the role a database's owner.
        let mut made = Self { admin, role, databases: Vec::new(), server: String::new() };
        made.admin
            .execute_unprepared(&format!("GRANT {} TO CURRENT_USER", made.role))
            .await
            .map_err(|error| format!("grant the role to the admin: {error}"))?;
        for purpose in purposes {
            let database = format!("{purpose}_leak_{suffix}");
            made.admin
                .execute_unprepared(&format!("CREATE DATABASE {database} OWNER {}", made.role))
                .await
                .map_err(|error| format!("create {database}: {error}"))?;
            made.databases.push(database);
        }
        let (_credentials, location) = admin_url.rsplit_once('@').ok_or("the admin URL has no credentials")?;
        let (server, _database) = location.split_once('/').ok_or("the admin URL names no database")?;
        server.clone_into(&mut made.server);
        Ok(made)
    }

    /// The URL of database `index`, logging in as the role with its password.
    fn url(&self, index: usize) -> String {
        format!("postgres://{}:{SERVING_DATABASE_PASSWORD}@{}/{}", self.role, self.server, self.databases[index])
    }

    /// How many server connections the role holds now.
    async fn connection_count(&self) -> i64 {
        use sea_orm::ConnectionTrait as _;

        let statement = sea_orm::Statement::from_string(
            self.admin.get_database_backend(),
            format!("SELECT count(*)::bigint AS n FROM pg_stat_activity WHERE usename = '{}'", self.role),
        );
        let row = self.admin.query_one_raw(statement).await.expect("pg_stat_activity answers").expect("one row");
        row.try_get::<i64>("", "n").expect("a count")
    }

    /// Refuses the role new logins and ends its connections: the mesh's
    /// pools must reconnect, and fail to.
    async fn lock_out(&self) {
        use sea_orm::ConnectionTrait as _;

        self.admin.execute_unprepared(&format!("ALTER ROLE {} NOLOGIN", self.role)).await.expect("role locked");
        self.admin
            .execute_unprepared(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}'",
                self.role
            ))
            .await
            .expect("the role's connections end");
    }

    async fn drop_all(self) {
        use sea_orm::ConnectionTrait as _;

        for database in &self.databases {
            self.admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .await
                .expect("test database dropped");
        }
        self.admin.execute_unprepared(&format!("DROP ROLE IF EXISTS {}", self.role)).await.expect("test role dropped");
    }
}

/// The admin URL of the test PostgreSQL server, or `None` (skipping, with a
/// note) when none is configured here; under CI a missing server fails.
fn postgres_admin_url() -> Option<String> {
    let source = mesh_kit::ConfigSource::from_process();
    let Some(admin_url) = source.var("MESH_TEST_POSTGRES_URL") else {
        assert!(
            source.var("CI").is_none(),
            "MESH_TEST_POSTGRES_URL is not set under CI; run services/vpnusers/scripts/test-postgres"
        );
        eprintln!("skipping: MESH_TEST_POSTGRES_URL is not set, so there is no PostgreSQL server to serve from");
        return None;
    };
    Some(admin_url.to_owned())
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one scenario: serve, call, lock out, call, search everything
async fn a_database_url_password_never_leaks_while_serving_on_postgres() {
    use mesh_proto::bulkops::v1 as bulk;
    use mesh_proto::vpnusers::v1 as vpn;

    let Some(admin_url) = postgres_admin_url() else { return };
    let leak_role = match LeakRole::create(&admin_url, &["vpnusers", "bulkops"]).await {
        Ok(role) => role,
        Err(why) => {
            assert!(mesh_kit::ConfigSource::from_process().var("CI").is_none(), "under CI: {why}");
            eprintln!("skipping: {why}");
            return;
        }
    };
    let (vpnusers_url, bulkops_url) = (leak_role.url(0), leak_role.url(1));
    let (receiver_addr, sink) = start_receiver().await;
    let otlp_endpoint = format!("http://{receiver_addr}");
    let mesh = TestMesh::start_capturing_stderr(&[
        ("DATABASE_URL", vpnusers_url.as_str()),
        ("MESH_BULKOPS_DATABASE_URL", bulkops_url.as_str()),
        ("MESH_VPNUSERS_CONNECT_TIMEOUT", "2"),
        ("MESH_BULKOPS_CONNECT_TIMEOUT", "2"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "debug"),
    ])
    .await;
    assert!(leak_role.connection_count().await > 0, "the mesh serves from PostgreSQL as the marked role");

    let vpnusers = "/mesh.vpnusers.v1.VpnUsers";
    let bulkops = "/mesh.bulkops.v1.BulkOps";
    let new_user = |username: &str| vpn::NewUser {
        username: username.into(),
        email: format!("{username}@example.com"),
        ..Default::default()
    };
    let create =
        vpn::CreateUsersRequest { users: vec![new_user("leak-alice"), new_user("leak-bob")], ..Default::default() };
    let created = call(&mesh, &format!("{vpnusers}/CreateUsers"), &create.encode_to_vec(), &[], false).await;
    assert_eq!(created.grpc_status, Some(0), "CreateUsers works on PostgreSQL: {created:?}");
    let created = vpn::CreateUsersResponse::decode(created.body.get(5..).unwrap_or_default()).expect("a response");
    let alice_id = created.results[0].user.as_ref().expect("alice").id.clone();
    let health_check = bulk::StartBulkOperationRequest {
        kind: bulk::OperationKind::HealthCheck.into(),
        target_set: Some(bulk::start_bulk_operation_request::TargetSet::TargetList(bulk::TargetList {
            targets: vec![bulk::Target { server_id: "simulator".into(), domain_name: "missing.example.com".into() }],
        })),
        mode: bulk::BulkMode::BestEffort.into(),
        ..Default::default()
    };
    let started =
        call(&mesh, &format!("{bulkops}/StartBulkOperation"), &health_check.encode_to_vec(), &[], false).await;
    assert_eq!(started.grpc_status, Some(0), "a job starts on PostgreSQL: {started:?}");
    let job_id =
        bulk::StartBulkOperationResponse::decode(started.body.get(5..).unwrap_or_default()).expect("a response").job_id;

    // Calls that work and calls that fail, while the database is there and after it refuses the role.
    let calls: Vec<(String, Vec<u8>, bool)> = vec![
        (format!("{vpnusers}/CreateUsers"), create.encode_to_vec(), false),
        (format!("{vpnusers}/GetUser"), vpn::GetUserRequest { id: alice_id.clone() }.encode_to_vec(), false),
        (
            format!("{vpnusers}/GetUser"),
            vpn::GetUserRequest { id: uuid::Uuid::now_v7().to_string() }.encode_to_vec(),
            false,
        ),
        (
            format!("{vpnusers}/ListUsers"),
            vpn::ListUsersRequest { page_size: 1, ..Default::default() }.encode_to_vec(),
            false,
        ),
        (
            format!("{vpnusers}/ListUsers"),
            vpn::ListUsersRequest { page_token: "forged".into(), ..Default::default() }.encode_to_vec(),
            false,
        ),
        (
            format!("{vpnusers}/SearchUsers"),
            vpn::SearchUsersRequest { query: "alice".into(), ..Default::default() }.encode_to_vec(),
            false,
        ),
        (format!("{vpnusers}/GetStats"), vpn::GetStatsRequest { signup_days: 7 }.encode_to_vec(), false),
        (format!("{vpnusers}/ExportUsers"), vpn::ExportUsersRequest::default().encode_to_vec(), false),
        (format!("{bulkops}/WatchJob"), bulk::WatchJobRequest { job_id: job_id.clone() }.encode_to_vec(), false),
        (
            format!("{bulkops}/GetJob"),
            bulk::GetJobRequest { job_id: job_id.clone(), include_targets: true }.encode_to_vec(),
            false,
        ),
        (
            format!("{bulkops}/GetJob"),
            bulk::GetJobRequest { job_id: uuid::Uuid::now_v7().to_string(), include_targets: false }.encode_to_vec(),
            false,
        ),
        (format!("{bulkops}/ListJobs"), bulk::ListJobsRequest::default().encode_to_vec(), false),
        (format!("{bulkops}/StartBulkOperation"), health_check.encode_to_vec(), false),
    ];
    let mut answers: Vec<(String, CallEnd)> = Vec::new();
    for (path, message, client_streaming) in &calls {
        answers.push((path.clone(), call(&mesh, path, message, &[], *client_streaming).await));
    }
    let worked = answers.iter().filter(|(_, answer)| answer.grpc_status == Some(0)).count();
    assert!(worked >= 8, "most calls work while the database is there: {answers:?}");

    leak_role.lock_out().await;
    let failed_before = answers.iter().filter(|(_, answer)| answer.grpc_status != Some(0)).count();
    for (path, message, client_streaming) in &calls {
        answers.push((path.clone(), call(&mesh, path, message, &[], *client_streaming).await));
    }
    let failed = answers.iter().filter(|(_, answer)| answer.grpc_status != Some(0)).count();
    assert!(failed > failed_before + 4, "calls fail once the database refuses the role: {answers:?}");

    let secrets = [SERVING_DATABASE_PASSWORD.to_owned()];
    for (path, answer) in &answers {
        assert_no_secret(&secrets, &answer.received_text(), &format!("the answer of {path}"));
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            // The gateway's root span of each StartBulkOperation, the last call.
            let exported = sink
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|span| span.name.ends_with("/StartBulkOperation") && span.parent_span_id.is_empty())
                .count();
            if exported >= 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the spans of the last calls are exported");
    let spans = sink.spans.lock().unwrap().clone();
    for span in &spans {
        assert_no_secret(&secrets, &format!("{span:?}"), "an exported span");
    }
    let log_lines = mesh.output_lines();
    assert!(log_lines.len() > answers.len(), "debug logs were captured: {} lines", log_lines.len());
    for line in &log_lines {
        assert_no_secret(&secrets, line, "a log line");
    }
    drop(mesh);
    leak_role.drop_all().await;
}
