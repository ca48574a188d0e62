//! The bad-input catalogue, `docs/errors.md`: one `mesh up` (with API tokens
//! configured, against the Virtualmin simulator) is sent, through the
//! gateway, every kind of bad input each service refuses, and the status
//! each gets is rendered as markdown and compared with the committed file,
//! so the document cannot drift from the code. `MESH_BLESS_ERRORS=1`
//! rewrites the file instead.
//!
//! Every case also holds the error model's invariants: the call fails with
//! neither UNKNOWN nor INTERNAL, carries an `ErrorInfo` with a reason and a
//! domain, and carries the caller's correlation id in the `ErrorInfo` and
//! in `x-correlation-id`; no message names the API token or the data
//! directory.

use std::fmt::Write as _;
use std::sync::LazyLock;

use mesh_kit::ConfigSource;
use mesh_proto::bulkops::v1 as bulk;
use mesh_proto::bulkops::v1::bulk_ops_client::BulkOpsClient;
use mesh_proto::cache::v1 as cache;
use mesh_proto::cache::v1::cache_client::CacheClient;
use mesh_proto::docker::v1 as docker;
use mesh_proto::docker::v1::docker_ops_client::DockerOpsClient;
use mesh_proto::memory::v1 as memory;
use mesh_proto::memory::v1::memory_profiler_client::MemoryProfilerClient;
use mesh_proto::virtualmin::v1 as vm;
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;
use mesh_proto::vpnusers::v1 as vpn;
use mesh_proto::vpnusers::v1::vpn_users_client::VpnUsersClient;
use regex::Regex;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::harness::TestMesh;
use crate::raw_call::grpc_message;
use crate::secrets::sha256_hex;

/// The committed catalogue.
const CATALOGUE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/errors.md");
/// Set to `1` to rewrite [`CATALOGUE_PATH`] from this run.
const BLESS_VAR: &str = "MESH_BLESS_ERRORS";
/// The command that checks (or, with [`BLESS_VAR`], rewrites) the catalogue.
const COMMAND: &str = "cargo test -p mesh --test e2e errors_catalogue";
/// The token every case sends, allowed every method.
const API_TOKEN: &str = "catalogue-token-5d1e";
/// A token allowed only `Cache/Get`.
const READ_ONLY_TOKEN: &str = "catalogue-read-only-77a0";
/// Every case sends this prefix and its number as its correlation id.
const CORRELATION_PREFIX: &str = "errcat-";
/// The Virtualmin server `mesh up` configures for its simulator.
const SIMULATOR: &str = "simulator";
/// A well-formed UUID no row has.
const UNKNOWN_UUID: &str = "0190c0de-0000-7000-8000-000000000000";

/// The rules that make a message stable from run to run, in the order
/// applied; the catalogue's header lists them.
static NORMALISATIONS: LazyLock<Vec<(Regex, &'static str, &'static str)>> = LazyLock::new(|| {
    vec![
        (Regex::new(&format!("{CORRELATION_PREFIX}[0-9]+")).unwrap(), "<correlation-id>", "the call's correlation id"),
        (
            Regex::new("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").unwrap(),
            "<uuid>",
            "any UUID (job, user and snapshot ids)",
        ),
        (
            Regex::new(r"(?:\d{1,3}\.){3}\d{1,3}:\d+|\[[0-9a-fA-F:]+\]:\d+|localhost:\d+").unwrap(),
            "<address>",
            "any `host:port` address (ephemeral ports)",
        ),
    ]
});

/// One bad input and what the mesh answered, normalised.
#[derive(Debug)]
struct Entry {
    section: &'static str,
    rpc: &'static str,
    input: String,
    code: Code,
    reason: String,
    domain: String,
    field: String,
    message: String,
}

/// The catalogue being filled: the mesh, the clients, and what every case got.
struct Catalogue {
    channel: Channel,
    /// `127.0.0.1:PORT` of the gateway, for calls made by hand.
    gateway_addr: String,
    /// The start of every temporary path (the data directory's); no message may hold it.
    temp_path_prefix: String,
    entries: Vec<Entry>,
    /// Inputs that look bad but are accepted on purpose, with the reason.
    accepted: Vec<(&'static str, &'static str, &'static str)>,
    violations: Vec<String>,
}

impl Catalogue {
    /// The correlation id of the next case recorded.
    fn next_correlation_id(&self) -> String {
        format!("{CORRELATION_PREFIX}{}", self.entries.len() + 1)
    }

    /// `message` as the next case's request: the API token and the case's correlation id.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.request_with_token(message, Some(API_TOKEN))
    }

    fn request_with_token<T>(&self, message: T, token: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let correlation_id = self.next_correlation_id();
        request.metadata_mut().insert("x-correlation-id", correlation_id.parse().expect("an ascii id"));
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        }
        request
    }

    /// `message` with the API token only, for the calls that set a case up.
    fn setup<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {API_TOKEN}").parse().expect("ascii"));
        request
    }

    /// Records the answer to the request made by [`Catalogue::request`] last,
    /// checking the invariants every refusal must hold.
    fn record<T: std::fmt::Debug>(
        &mut self,
        section: &'static str,
        rpc: &'static str,
        input: &str,
        result: Result<tonic::Response<T>, tonic::Status>,
    ) {
        let correlation_id = self.next_correlation_id();
        let place = format!("{section} {rpc} ({input}, {correlation_id})");
        let status = match result {
            Ok(response) => {
                self.violations.push(format!("{place}: bad input was accepted: {:?}", response.into_inner()));
                return;
            }
            Err(status) => status,
        };
        if matches!(status.code(), Code::Ok | Code::Unknown | Code::Internal) {
            self.violations.push(format!("{place}: bad input answered {:?}: {status:?}", status.code()));
        }
        let details = status.get_error_details();
        let (reason, domain) = if let Some(info) = details.error_info() {
            if info.reason.is_empty() || info.domain.is_empty() {
                self.violations.push(format!("{place}: ErrorInfo lacks a reason or domain: {info:?}"));
            }
            if info.metadata.get("correlation_id") != Some(&correlation_id) {
                self.violations.push(format!("{place}: ErrorInfo lacks the correlation id: {info:?}"));
            }
            (info.reason.clone(), info.domain.clone())
        } else {
            self.violations.push(format!("{place}: no ErrorInfo: {status:?}"));
            (String::new(), String::new())
        };
        let echoed = status.metadata().get("x-correlation-id").and_then(|value| value.to_str().ok());
        if echoed != Some(correlation_id.as_str()) {
            self.violations.push(format!("{place}: x-correlation-id is {echoed:?}"));
        }
        for secret in [API_TOKEN, READ_ONLY_TOKEN, self.temp_path_prefix.as_str()] {
            if status.message().contains(secret) || format!("{details:?}").contains(secret) {
                self.violations.push(format!("{place}: the status names `{secret}`: {status:?}"));
            }
        }
        let field = details
            .bad_request()
            .map(|bad_request| {
                bad_request
                    .field_violations
                    .iter()
                    .map(|violation| violation.field.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        self.entries.push(Entry {
            section,
            rpc,
            input: input.to_owned(),
            code: status.code(),
            reason,
            domain,
            field,
            message: normalise(status.message()),
        });
    }

    /// Records the status of the first item of a batch answer (or of the
    /// whole call, when it was refused), as [`Catalogue::record`] does.
    fn record_item<T: std::fmt::Debug>(
        &mut self,
        section: &'static str,
        rpc: &'static str,
        input: &str,
        result: Result<tonic::Response<T>, tonic::Status>,
        first_item_status: impl Fn(&T) -> Option<tonic_types::pb::Status>,
    ) {
        let outcome = result.and_then(|response| {
            let header_id = response.metadata().get("x-correlation-id").cloned();
            let answer = response.into_inner();
            match first_item_status(&answer) {
                Some(item) if item.code != Code::Ok as i32 => {
                    let details = prost::Message::encode_to_vec(&item);
                    let mut status = tonic::Status::with_details(Code::from(item.code), item.message, details.into());
                    if let Some(id) = header_id {
                        status.metadata_mut().insert("x-correlation-id", id);
                    }
                    Err(status)
                }
                _ => Ok(tonic::Response::new(answer)),
            }
        });
        self.record(section, rpc, input, outcome);
    }

    /// Records an input that looks bad but is accepted on purpose, failing
    /// the test if it is refused.
    fn record_accepted<T: std::fmt::Debug>(
        &mut self,
        section: &'static str,
        input: &'static str,
        why: &'static str,
        result: Result<tonic::Response<T>, tonic::Status>,
    ) {
        if let Err(status) = result {
            self.violations.push(format!("{section} ({input}): refused, though accepted on purpose: {status:?}"));
        }
        self.accepted.push((section, input, why));
    }

    /// Calls `path` by hand over HTTP/2, with `extra_headers` (which a
    /// generated client would act on itself, like `grpc-timeout`), as the
    /// next case; the answer's body is read and dropped.
    async fn call_by_hand(
        &self,
        path: &str,
        extra_headers: &[(&str, &str)],
        message: &[u8],
    ) -> Result<tonic::Response<()>, tonic::Status> {
        let tcp = tokio::net::TcpStream::connect(&self.gateway_addr).await.expect("the gateway accepts connections");
        let (mut send_request, connection) = h2::client::handshake(tcp).await.expect("the HTTP/2 handshake succeeds");
        tokio::spawn(connection);
        let mut head = http::Request::post(format!("http://{}{path}", self.gateway_addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-correlation-id", self.next_correlation_id())
            .header("authorization", format!("Bearer {API_TOKEN}"));
        for (name, value) in extra_headers {
            head = head.header(*name, *value);
        }
        let (response, mut stream) =
            send_request.send_request(head.body(()).expect("a valid head"), false).expect("the request is sent");
        stream.send_data(grpc_message(message), true).expect("the message is sent");
        let response = response.await.expect("the gateway answers");
        let header_id = response.headers().get("x-correlation-id").cloned();
        let mut status = tonic::Status::from_header_map(response.headers());
        if status.is_none() {
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("the body arrives");
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let trailers = body.trailers().await.expect("the trailers arrive").unwrap_or_default();
            status = tonic::Status::from_header_map(&trailers);
        }
        match status {
            Some(mut status) if status.code() != Code::Ok => {
                if let Some(id) = header_id
                    && !status.metadata().contains_key("x-correlation-id")
                {
                    status
                        .metadata_mut()
                        .insert("x-correlation-id", id.to_str().expect("ascii").parse().expect("an ascii id"));
                }
                Err(status)
            }
            _ => Ok(tonic::Response::new(())),
        }
    }

    /// The first message of a server stream, so a refusal sent after the
    /// headers counts like one sent instead of them (with the headers'
    /// correlation id).
    async fn first_message<T>(
        result: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    ) -> Result<tonic::Response<Option<T>>, tonic::Status> {
        let response = result?;
        let header_id = response.metadata().get("x-correlation-id").cloned();
        let mut stream = response.into_inner();
        match stream.message().await {
            Ok(message) => Ok(tonic::Response::new(message)),
            Err(mut status) => {
                if let Some(id) = header_id
                    && !status.metadata().contains_key("x-correlation-id")
                {
                    status.metadata_mut().insert("x-correlation-id", id);
                }
                Err(status)
            }
        }
    }

    /// Calls `path` with `message` as a `cache.v1.GetRequest`, whatever the
    /// path: how a caller reaches a service or method that may not exist.
    async fn call_path(
        &self,
        path: &'static str,
        request: tonic::Request<cache::GetRequest>,
    ) -> Result<tonic::Response<cache::GetResponse>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.expect("the channel is ready");
        let codec = tonic_prost::ProstCodec::<cache::GetRequest, cache::GetResponse>::default();
        grpc.unary(request, http::uri::PathAndQuery::from_static(path), codec).await
    }
}

/// `text` with every volatile part replaced by its placeholder.
fn normalise(text: &str) -> String {
    let mut normalised = text.to_owned();
    for (pattern, placeholder, _why) in NORMALISATIONS.iter() {
        normalised = pattern.replace_all(&normalised, *placeholder).into_owned();
    }
    normalised
}

/// A markdown table cell: pipes escaped, line breaks flattened.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The catalogue as the markdown of `docs/errors.md`.
fn render(entries: &[Entry], accepted: &[(&str, &str, &str)]) -> String {
    let mut markdown = String::new();
    markdown.push_str("# Bad input catalogue\n\n");
    markdown.push_str(
        "<!-- Generated by tests/e2e/errors_catalogue.rs; do not edit by hand. -->\n\n\
         For each service, the bad inputs the end-to-end test `errors_catalogue` sends through the gateway\n\
         of one `mesh up` (default settings, the Virtualmin simulator, two API tokens configured) and the exact\n\
         status each gets back: the gRPC code, the `google.rpc.ErrorInfo` reason and domain, the field a\n\
         `google.rpc.BadRequest` names, and the status message. An RPC marked *(item)* accepts the batch and\n\
         refuses the item: the row is that item's `google.rpc.Status` in the response.\n\n",
    );
    let _ = writeln!(
        markdown,
        "The test fails when this file differs from what the mesh answers. After a deliberate change, regenerate it with\n\n\
         ```sh\nMESH_BLESS_ERRORS=1 {COMMAND}\n```\n"
    );
    markdown.push_str(
        "Every refusal below also carries the caller's correlation id, in `ErrorInfo.metadata.correlation_id` and\n\
         in the `x-correlation-id` header, and none is UNKNOWN or INTERNAL; the test checks both. Messages are\n\
         normalised so they do not change from run to run:\n\n",
    );
    for (_pattern, placeholder, why) in NORMALISATIONS.iter() {
        let _ = writeln!(markdown, "- `{placeholder}` stands for {why};");
    }
    markdown.push_str("- a table cell's `|` is written `\\|`.\n");
    let mut sections: Vec<&'static str> = Vec::new();
    for entry in entries {
        if !sections.contains(&entry.section) {
            sections.push(entry.section);
        }
    }
    for section in sections {
        let _ = writeln!(markdown, "\n## {section}\n");
        markdown.push_str("| RPC | bad input | code | reason | domain | field | message |\n");
        markdown.push_str("|---|---|---|---|---|---|---|\n");
        for entry in entries.iter().filter(|entry| entry.section == section) {
            let _ = writeln!(
                markdown,
                "| {} | {} | {} | `{}` | `{}` | {} | {} |",
                cell(entry.rpc),
                cell(&entry.input),
                code_name(entry.code),
                cell(&entry.reason),
                cell(&entry.domain),
                if entry.field.is_empty() { String::new() } else { format!("`{}`", cell(&entry.field)) },
                cell(&entry.message),
            );
        }
    }
    if !accepted.is_empty() {
        markdown.push_str(
            "\n## Accepted on purpose\n\nInputs that look bad but are served; the test checks that they still are.\n\n",
        );
        markdown.push_str("| where | input | why |\n|---|---|---|\n");
        for (section, input, why) in accepted {
            let _ = writeln!(markdown, "| {} | {} | {} |", cell(section), cell(input), cell(why));
        }
    }
    markdown
}

/// The code's name as the gRPC spec writes it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Where `expected` and `actual` first differ, as a hint for the failure.
fn first_difference(expected: &str, actual: &str) -> String {
    let mut expected_lines = expected.lines();
    let mut actual_lines = actual.lines();
    let mut line_number = 1;
    loop {
        match (expected_lines.next(), actual_lines.next()) {
            (Some(committed), Some(answered)) if committed == answered => line_number += 1,
            (None, None) => return "the files differ only in line endings".to_owned(),
            (committed, answered) => {
                return format!(
                    "line {line_number}:\n  committed: {}\n  answered:  {}",
                    committed.unwrap_or("<end of file>"),
                    answered.unwrap_or("<end of file>")
                );
            }
        }
    }
}

#[tokio::test]
async fn every_bad_input_gets_the_status_docs_errors_md_names() {
    let config_dir = tempfile::tempdir().expect("a config directory");
    let config_path = config_dir.path().join("mesh.toml");
    std::fs::write(
        &config_path,
        format!(
            "[gateway]\n\n[[gateway.tokens]]\nname = \"catalogue\"\nsha256 = \"{}\"\nallow = [\"*\"]\n\n\
             [[gateway.tokens]]\nname = \"catalogue-read-only\"\nsha256 = \"{}\"\nallow = [\"mesh.cache.v1.Cache/Get\"]\n",
            sha256_hex(API_TOKEN),
            sha256_hex(READ_ONLY_TOKEN)
        ),
    )
    .expect("config written");
    let mesh = TestMesh::start_with_env(&[("MESH_CONFIG", config_path.to_str().expect("a UTF-8 path"))]).await;
    let channel = mesh.channel().await;
    let mut catalogue = Catalogue {
        channel: channel.clone(),
        gateway_addr: mesh.gateway_addr.clone(),
        temp_path_prefix: std::env::temp_dir().join(".tmp").to_string_lossy().into_owned(),
        entries: Vec::new(),
        accepted: Vec::new(),
        violations: Vec::new(),
    };

    gateway_cases(&mut catalogue).await;
    cache_cases(&mut catalogue, CacheClient::new(channel.clone())).await;
    vpnusers_cases(&mut catalogue, VpnUsersClient::new(channel.clone())).await;
    virtualmin_cases(&mut catalogue, VirtualminGatewayClient::new(channel.clone())).await;
    docker_cases(&mut catalogue, DockerOpsClient::new(channel.clone())).await;
    memory_cases(&mut catalogue, MemoryProfilerClient::new(channel.clone())).await;
    bulkops_cases(&mut catalogue, BulkOpsClient::new(channel)).await;

    assert!(
        catalogue.violations.is_empty(),
        "refusals that break the error model:\n{}",
        catalogue.violations.join("\n")
    );
    let rendered = render(&catalogue.entries, &catalogue.accepted);
    let bless = ConfigSource::from_process().var(BLESS_VAR).is_some_and(|value| value == "1");
    if bless {
        std::fs::write(CATALOGUE_PATH, &rendered).expect("docs/errors.md written");
        return;
    }
    let committed = std::fs::read_to_string(CATALOGUE_PATH).unwrap_or_default();
    assert!(
        committed == rendered,
        "docs/errors.md differs from what the mesh answers; if the change is deliberate, run\n  \
         {BLESS_VAR}=1 {COMMAND}\nand commit the file. First difference at {}",
        first_difference(&committed, &rendered)
    );
}

async fn gateway_cases(cat: &mut Catalogue) {
    const GATEWAY: &str = "Gateway";
    let get = || cache::GetRequest { key: "k".into() };
    let answer = cat.call_path("/mesh.nope.v1.Nope/Get", cat.request(get())).await;
    cat.record(GATEWAY, "/mesh.nope.v1.Nope/Get", "a service the mesh does not serve", answer);
    let answer = cat.call_path("/mesh.cache.v1.Cache/Nope", cat.request(get())).await;
    cat.record(GATEWAY, "/mesh.cache.v1.Cache/Nope", "a method the service does not have", answer);
    let answer = cat.call_path("/not-a-grpc-path", cat.request(get())).await;
    cat.record(GATEWAY, "/not-a-grpc-path", "a path that is not `/<package>.<Service>/<Method>`", answer);

    let mut cache_client = CacheClient::new(cat.channel.clone());
    let answer = cache_client.get(cat.request_with_token(get(), None)).await;
    cat.record(GATEWAY, "Cache/Get", "no credentials", answer);
    let answer = cache_client.get(cat.request_with_token(get(), Some("not-a-token"))).await;
    cat.record(GATEWAY, "Cache/Get", "an unknown bearer token", answer);
    let mut with_api_key = cat.request_with_token(get(), None);
    with_api_key.metadata_mut().insert("x-api-key", "not-a-key".parse().unwrap());
    let answer = cache_client.get(with_api_key).await;
    cat.record(GATEWAY, "Cache/Get", "an unknown `x-api-key`", answer);
    let set = cache::SetRequest { key: "k".into(), value: b"v".to_vec(), ..Default::default() };
    let answer = cache_client.set(cat.request_with_token(set, Some(READ_ONLY_TOKEN))).await;
    cat.record(GATEWAY, "Cache/Set", "a token allowed only `Cache/Get`", answer);

    let oversized = cache::SetRequest { key: "big".into(), value: vec![0; 5 * 1024 * 1024], ..Default::default() };
    let answer = cache_client.set(cat.request(oversized)).await;
    cat.record(GATEWAY, "Cache/Set", "a 5 MiB request message (limit 4 MiB)", answer);
    let get_message = prost::Message::encode_to_vec(&get());
    let answer = cat.call_by_hand("/mesh.cache.v1.Cache/Get", &[("grpc-timeout", "0n")], &get_message).await;
    cat.record(GATEWAY, "Cache/Get", "`grpc-timeout: 0n`, a deadline already passed", answer);
    let answer = cat.call_by_hand("/mesh.cache.v1.Cache/Get", &[("grpc-timeout", "soon")], &get_message).await;
    cat.record_accepted(
        "Gateway: Cache/Get",
        "`grpc-timeout: soon`, not a timeout",
        "ignored, as tonic does: the route's default deadline applies, so the call is still bounded",
        answer,
    );
}

#[allow(clippy::too_many_lines)] // one table: each case is a line or two
async fn cache_cases(cat: &mut Catalogue, mut client: CacheClient<Channel>) {
    const CACHE: &str = "Cache (`mesh.cache.v1.Cache`)";
    let ttl = |seconds: i64| Some(prost_types::Duration { seconds, nanos: 0 });
    let set = |key: &str, ttl: Option<prost_types::Duration>, tags: Vec<String>| cache::SetRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ttl,
        tags,
        ..Default::default()
    };
    let answer = client.get(cat.request(cache::GetRequest { key: String::new() })).await;
    cat.record(CACHE, "Get", "empty key", answer);
    let answer = client.set(cat.request(set(&"k".repeat(5000), None, Vec::new()))).await;
    cat.record(CACHE, "Set", "a 5000-byte key", answer);
    let answer = client.set(cat.request(set("k", ttl(-5), Vec::new()))).await;
    cat.record(CACHE, "Set", "ttl of -5 s", answer);
    let answer = client.set(cat.request(set("k", ttl(0), Vec::new()))).await;
    cat.record(CACHE, "Set", "ttl of 0 s", answer);
    let answer = client.set(cat.request(set("k", ttl(100 * 365 * 86_400), Vec::new()))).await;
    cat.record(CACHE, "Set", "ttl of 100 years", answer);
    let bad_nanos = Some(prost_types::Duration { seconds: 1, nanos: 2_000_000_000 });
    let answer = client.set(cat.request(set("k", bad_nanos, Vec::new()))).await;
    cat.record(CACHE, "Set", "ttl with nanos of 2e9", answer);
    let answer = client.set(cat.request(set("k", None, (0..1000).map(|i| format!("t{i}")).collect()))).await;
    cat.record(CACHE, "Set", "1000 tags", answer);
    let answer = client.set(cat.request(set("k", None, vec!["t".repeat(5000)]))).await;
    cat.record(CACHE, "Set", "a 5000-byte tag", answer);
    let fill = cache::SetRequest { lease_id: "not-a-lease".into(), ..set("k", None, Vec::new()) };
    let answer = client.set(cat.request(fill)).await;
    cat.record(CACHE, "Set", "a fill naming a lease nobody holds", answer);
    let release = cache::ReleaseLeaseRequest { key: "k".into(), lease_id: "not-a-lease".into() };
    let answer = client.release_lease(cat.request(release)).await;
    cat.record(CACHE, "ReleaseLease", "a lease nobody holds", answer);
    let lease = cache::GetOrLeaseRequest { key: "k".into(), lease_ttl: ttl(-1), max_wait: None };
    let answer = client.get_or_lease(cat.request(lease)).await;
    cat.record(CACHE, "GetOrLease", "lease_ttl of -1 s", answer);
    let lease = cache::GetOrLeaseRequest { key: String::new(), lease_ttl: None, max_wait: None };
    let answer = client.get_or_lease(cat.request(lease)).await;
    cat.record(CACHE, "GetOrLease", "empty key", answer);
    let many_keys = (0..100_000).map(|i| format!("k{i}")).collect();
    let answer = client.get_many(cat.request(cache::GetManyRequest { keys: many_keys })).await;
    cat.record(CACHE, "GetMany", "100000 keys", answer);
    let many_keys = (0..100_000).map(|i| format!("k{i}")).collect();
    let answer = client.delete_many(cat.request(cache::DeleteManyRequest { keys: many_keys })).await;
    cat.record(CACHE, "DeleteMany", "100000 keys", answer);
    let regex = |pattern: &str| cache::InvalidatePatternRequest {
        pattern: pattern.into(),
        syntax: cache::PatternSyntax::Regex.into(),
    };
    let answer = client.invalidate_pattern(cat.request(regex("user:(unclosed"))).await;
    cat.record(CACHE, "InvalidatePattern", "regex `user:(unclosed`", answer);
    let answer = client.invalidate_pattern(cat.request(regex("(a)\\1"))).await;
    cat.record(CACHE, "InvalidatePattern", "regex with a backreference `(a)\\1`", answer);
    let answer = client.invalidate_pattern(cat.request(regex("(?:(?:a{100}){100}){100}"))).await;
    cat.record(CACHE, "InvalidatePattern", "regex `(?:(?:a{100}){100}){100}`", answer);
    let glob = cache::InvalidatePatternRequest { pattern: "user:[".into(), syntax: cache::PatternSyntax::Glob.into() };
    let answer = client.invalidate_pattern(cat.request(glob)).await;
    cat.record(CACHE, "InvalidatePattern", "glob `user:[`", answer);
}

/// A new user with this username and a valid email.
fn new_user(username: &str) -> vpn::NewUser {
    vpn::NewUser { username: username.into(), email: format!("{username}@example.com"), ..Default::default() }
}

fn create(users: Vec<vpn::NewUser>) -> vpn::CreateUsersRequest {
    vpn::CreateUsersRequest { users, ..Default::default() }
}

fn list(filter: Option<vpn::UserFilter>, page_size: i32, page_token: &str) -> vpn::ListUsersRequest {
    vpn::ListUsersRequest { filter, page_size, page_token: page_token.into(), ..Default::default() }
}

#[allow(clippy::too_many_lines)] // one table: each case is a line or two
async fn vpnusers_cases(cat: &mut Catalogue, mut client: VpnUsersClient<Channel>) {
    const VPNUSERS: &str = "VpnUsers (`mesh.vpnusers.v1.VpnUsers`)";
    // Two users, so a list has a second page and a username is taken.
    let created = client
        .create_users(Catalogue::setup(vpn::CreateUsersRequest {
            users: vec![new_user("catalogue-taken"), new_user("catalogue-second")],
            request_id: "catalogue-request-1".into(),
            ..Default::default()
        }))
        .await
        .expect("the catalogue's users are created")
        .into_inner();
    assert_eq!(created.created_count, 2);

    let answer =
        client.create_users(cat.request(create((0..101).map(|i| new_user(&format!("batch-{i}"))).collect()))).await;
    cat.record(VPNUSERS, "CreateUsers", "101 users (max_batch_size 100)", answer);
    let answer = client.create_users(cat.request(create(vec![new_user("")]))).await;
    cat.record(VPNUSERS, "CreateUsers", "empty username", answer);
    let answer = client.create_users(cat.request(create(vec![new_user("bad name")]))).await;
    cat.record(VPNUSERS, "CreateUsers", "username `bad name`", answer);
    let answer = client.create_users(cat.request(create(vec![new_user(&"u".repeat(300))]))).await;
    cat.record(VPNUSERS, "CreateUsers", "a 300-character username", answer);
    let bad_email = vpn::NewUser { email: "not-an-email".into(), ..new_user("bad-email") };
    let answer = client.create_users(cat.request(create(vec![bad_email]))).await;
    cat.record(VPNUSERS, "CreateUsers", "email `not-an-email`", answer);
    let answer = client.create_users(cat.request(create(vec![new_user("twice"), new_user("twice")]))).await;
    cat.record(VPNUSERS, "CreateUsers", "the same username twice in one batch", answer);
    let answer = client.create_users(cat.request(create(vec![new_user("catalogue-taken")]))).await;
    cat.record(VPNUSERS, "CreateUsers", "a username another user has", answer);
    let bad_note = vpn::NewUser { note: "a\0b".into(), ..new_user("bad-note") };
    let answer = client.create_users(cat.request(create(vec![bad_note]))).await;
    cat.record(VPNUSERS, "CreateUsers", "a note holding NUL", answer);
    let huge_limit = vpn::NewUser { traffic_limit_bytes: u64::MAX, ..new_user("huge-limit") };
    let answer = client.create_users(cat.request(create(vec![huge_limit]))).await;
    cat.record(VPNUSERS, "CreateUsers", "traffic_limit_bytes 2^64-1", answer);
    let bad_protocol = vpn::NewUser { protocol: 99, ..new_user("bad-protocol") };
    let answer = client.create_users(cat.request(create(vec![bad_protocol]))).await;
    cat.record(VPNUSERS, "CreateUsers", "protocol 99", answer);
    let bad_expiry =
        vpn::NewUser { expires_at: Some(prost_types::Timestamp { seconds: 0, nanos: -1 }), ..new_user("bad-expiry") };
    let answer = client.create_users(cat.request(create(vec![bad_expiry]))).await;
    cat.record(VPNUSERS, "CreateUsers", "expires_at with negative nanos", answer);
    let long_key = vpn::CreateUsersRequest { request_id: "r".repeat(129), ..create(vec![new_user("long-key")]) };
    let answer = client.create_users(cat.request(long_key)).await;
    cat.record(VPNUSERS, "CreateUsers", "a 129-character request_id", answer);
    let reused_key =
        vpn::CreateUsersRequest { request_id: "catalogue-request-1".into(), ..create(vec![new_user("other-user")]) };
    let answer = client.create_users(cat.request(reused_key)).await;
    cat.record(VPNUSERS, "CreateUsers", "a request_id already used for another request", answer);

    let update = |id: &str, paths: &[&str]| vpn::UpdateUsersRequest {
        updates: vec![vpn::UserUpdate {
            id: id.into(),
            user: Some(vpn::User { note: "changed".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() }),
        }],
        ..Default::default()
    };
    let existing_id = created.results[0].user.as_ref().expect("a created user").id.clone();
    let answer = client.update_users(cat.request(update("not-a-uuid", &["note"]))).await;
    cat.record(VPNUSERS, "UpdateUsers", "id `not-a-uuid`", answer);
    let answer = client.update_users(cat.request(update(&existing_id, &[]))).await;
    cat.record(VPNUSERS, "UpdateUsers", "an empty update_mask", answer);
    let answer = client.update_users(cat.request(update(&existing_id, &["id"]))).await;
    cat.record(VPNUSERS, "UpdateUsers", "update_mask path `id`", answer);
    let answer = client.update_users(cat.request(update(UNKNOWN_UUID, &["note"]))).await;
    cat.record(VPNUSERS, "UpdateUsers", "an id no user has", answer);
    let delete = vpn::DeleteUsersRequest { ids: vec![existing_id.clone(), existing_id.clone()], ..Default::default() };
    let answer = client.delete_users(cat.request(delete)).await;
    cat.record(VPNUSERS, "DeleteUsers", "the same id twice", answer);
    let answer = client
        .get_users(cat.request(vpn::GetUsersRequest { ids: vec![UNKNOWN_UUID.into(); 101], ..Default::default() }))
        .await;
    cat.record(VPNUSERS, "GetUsers", "101 ids", answer);
    let answer = client.get_user(cat.request(vpn::GetUserRequest { id: "not-a-uuid".into() })).await;
    cat.record(VPNUSERS, "GetUser", "id `not-a-uuid`", answer);
    let answer = client.get_user(cat.request(vpn::GetUserRequest { id: UNKNOWN_UUID.into() })).await;
    cat.record(VPNUSERS, "GetUser", "an id no user has", answer);

    let answer = client.list_users(cat.request(list(None, -1, ""))).await;
    cat.record(VPNUSERS, "ListUsers", "page_size -1", answer);
    let answer = client.list_users(cat.request(list(None, 1_000_000_000, ""))).await;
    cat.record(VPNUSERS, "ListUsers", "page_size 10^9", answer);
    let answer = client.list_users(cat.request(vpn::ListUsersRequest { page_number: -1, ..list(None, 1, "") })).await;
    cat.record(VPNUSERS, "ListUsers", "page_number -1", answer);
    let answer = client.list_users(cat.request(list(None, 1, "forged-token"))).await;
    cat.record(VPNUSERS, "ListUsers", "a forged page_token", answer);
    let first_page = client.list_users(Catalogue::setup(list(None, 1, ""))).await.expect("a first page").into_inner();
    assert!(!first_page.next_page_token.is_empty(), "two users make two pages");
    let other_filter = vpn::UserFilter { username_pattern: "catalogue*".into(), ..Default::default() };
    let answer = client.list_users(cat.request(list(Some(other_filter), 1, &first_page.next_page_token))).await;
    cat.record(VPNUSERS, "ListUsers", "a page_token issued for another filter", answer);
    let unspecified_status =
        vpn::UserFilter { statuses: vec![vpn::UserStatus::Unspecified.into()], ..Default::default() };
    let answer = client.list_users(cat.request(list(Some(unspecified_status), 10, ""))).await;
    cat.record(VPNUSERS, "ListUsers", "filter statuses [USER_STATUS_UNSPECIFIED]", answer);
    let inverted_range = vpn::UserFilter {
        traffic_used: Some(vpn::ByteRange { min_bytes: Some(10), max_bytes: Some(1) }),
        ..Default::default()
    };
    let answer = client.list_users(cat.request(list(Some(inverted_range), 10, ""))).await;
    cat.record(VPNUSERS, "ListUsers", "filter traffic_used min 10 > max 1", answer);

    let search = |query: &str, page_size: i32| vpn::SearchUsersRequest {
        query: query.into(),
        page_size,
        page_token: String::new(),
    };
    let answer = client.search_users(cat.request(search("", 10))).await;
    cat.record(VPNUSERS, "SearchUsers", "empty query", answer);
    let answer = client.search_users(cat.request(search(&"q".repeat(10_000), 10))).await;
    cat.record(VPNUSERS, "SearchUsers", "a 10000-character query", answer);
    let answer = client.search_users(cat.request(search("alice", 1_000_000_000))).await;
    cat.record(VPNUSERS, "SearchUsers", "page_size 10^9", answer);
    let forged = vpn::SearchUsersRequest { page_token: "forged-token".into(), ..search("alice", 10) };
    let answer = client.search_users(cat.request(forged)).await;
    cat.record(VPNUSERS, "SearchUsers", "a forged page_token", answer);
    let answer = client.get_stats(cat.request(vpn::GetStatsRequest { signup_days: 367 })).await;
    cat.record(VPNUSERS, "GetStats", "signup_days 367", answer);

    let set_status = |status: vpn::UserStatus, selector| vpn::SetStatusRequest { status: status.into(), selector };
    let answer = client.set_status(cat.request(set_status(vpn::UserStatus::Suspended, None))).await;
    cat.record(VPNUSERS, "SetStatus", "neither ids nor filter", answer);
    let empty_filter = Some(vpn::set_status_request::Selector::Filter(vpn::UserFilter::default()));
    let answer = client.set_status(cat.request(set_status(vpn::UserStatus::Suspended, empty_filter))).await;
    cat.record(VPNUSERS, "SetStatus", "an empty filter (would match every user)", answer);
    let ids = Some(vpn::set_status_request::Selector::Ids(vpn::UserIds { ids: vec![existing_id] }));
    let answer = client.set_status(cat.request(set_status(vpn::UserStatus::Unspecified, ids))).await;
    cat.record(VPNUSERS, "SetStatus", "status USER_STATUS_UNSPECIFIED", answer);
    let export = vpn::ExportUsersRequest { filter: None, chunk_size: 1_000_000_000 };
    let answer = Catalogue::first_message(client.export_users(cat.request(export)).await).await;
    cat.record(VPNUSERS, "ExportUsers", "chunk_size 10^9", answer);
}

#[allow(clippy::too_many_lines)] // one table: each case is a line or two
async fn virtualmin_cases(cat: &mut Catalogue, mut client: VirtualminGatewayClient<Channel>) {
    const VIRTUALMIN: &str = "VirtualminGateway (`mesh.virtualmin.v1.VirtualminGateway`, against the simulator)";
    let listing = |server_id: &str, page_size: i32, page_token: &str| vm::ListDomainsRequest {
        server_id: server_id.into(),
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    };
    let domain =
        |domain_name: &str| vm::GetDomainRequest { server_id: SIMULATOR.into(), domain_name: domain_name.into() };
    let answer = client.list_domains(cat.request(listing("nope", 10, ""))).await;
    cat.record(VIRTUALMIN, "ListDomains", "server_id `nope` (not configured)", answer);
    let answer = client.list_domains(cat.request(listing("", 10, ""))).await;
    cat.record(VIRTUALMIN, "ListDomains", "empty server_id", answer);
    let answer = client.list_domains(cat.request(listing(SIMULATOR, -1, ""))).await;
    cat.record(VIRTUALMIN, "ListDomains", "page_size -1", answer);
    let answer = client.list_domains(cat.request(listing(SIMULATOR, 1_000_000_000, ""))).await;
    cat.record(VIRTUALMIN, "ListDomains", "page_size 10^9", answer);
    let answer = client.list_domains(cat.request(listing(SIMULATOR, 10, "forged-token"))).await;
    cat.record(VIRTUALMIN, "ListDomains", "a forged page_token", answer);
    let answer = client.get_domain(cat.request(domain("missing.example.com"))).await;
    cat.record(VIRTUALMIN, "GetDomain", "a domain the server does not have", answer);
    let answer = client.get_domain(cat.request(domain("a.example.com\nprogram=delete-domain"))).await;
    cat.record(VIRTUALMIN, "GetDomain", "a domain name holding a newline", answer);
    let answer = client.get_domain(cat.request(domain("--all-domains"))).await;
    cat.record(VIRTUALMIN, "GetDomain", "domain name `--all-domains` (leading `-`)", answer);
    let answer = client.get_domain(cat.request(domain(""))).await;
    cat.record(VIRTUALMIN, "GetDomain", "empty domain name", answer);

    let existing = client
        .list_domains(Catalogue::setup(listing(SIMULATOR, 1, "")))
        .await
        .expect("the simulator lists domains")
        .into_inner()
        .domains
        .into_iter()
        .next()
        .expect("the simulator has a domain")
        .name;
    let create_domain = |name: &str, key: &str| vm::CreateDomainRequest {
        server_id: SIMULATOR.into(),
        domain_name: name.into(),
        password: "catalogue-password-1".into(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    let answer = client.create_domain(cat.request(create_domain(&existing, ""))).await;
    cat.record(VIRTUALMIN, "CreateDomain", "a domain that already exists", answer);
    let answer = client.create_domain(cat.request(create_domain("not a domain", ""))).await;
    cat.record(VIRTUALMIN, "CreateDomain", "domain name `not a domain`", answer);
    client
        .create_domain(Catalogue::setup(create_domain("catalogue.example.com", "catalogue-create-1")))
        .await
        .expect("the catalogue's domain is created");
    let answer =
        client.create_domain(cat.request(create_domain("catalogue-2.example.com", "catalogue-create-1"))).await;
    cat.record(VIRTUALMIN, "CreateDomain", "an idempotency_key already used for another domain", answer);
    let suspend = vm::SuspendDomainRequest {
        server_id: SIMULATOR.into(),
        domain_name: "missing.example.com".into(),
        reason: String::new(),
    };
    let answer = client.suspend_domain(cat.request(suspend)).await;
    cat.record(VIRTUALMIN, "SuspendDomain", "a domain the server does not have", answer);
    let backup = vm::BackupDomainRequest {
        server_id: SIMULATOR.into(),
        domain_name: existing.clone(),
        destination_path: "relative/backups".into(),
        ..Default::default()
    };
    let answer = client.backup_domain(cat.request(backup)).await;
    cat.record(VIRTUALMIN, "BackupDomain", "destination_path `relative/backups`", answer);
    let operation = vm::GetBackupOperationRequest { operation_id: "no-such-operation".into() };
    let answer = client.get_backup_operation(cat.request(operation)).await;
    cat.record(VIRTUALMIN, "GetBackupOperation", "an operation id never issued", answer);
    let date = |year: i32, month: i32, day: i32| Some(vm::Date { year, month, day });
    let bandwidth = vm::GetBandwidthRequest {
        server_id: SIMULATOR.into(),
        domain_names: vec![existing.clone()],
        start_date: date(2026, 3, 1),
        end_date: date(2026, 1, 1),
    };
    let answer = client.get_bandwidth(cat.request(bandwidth)).await;
    cat.record(VIRTUALMIN, "GetBandwidth", "start_date after end_date", answer);
    let bandwidth = vm::GetBandwidthRequest {
        server_id: SIMULATOR.into(),
        domain_names: vec![existing],
        start_date: date(2026, 2, 30),
        end_date: date(2026, 3, 1),
    };
    let answer = client.get_bandwidth(cat.request(bandwidth)).await;
    cat.record(VIRTUALMIN, "GetBandwidth", "start_date 2026-02-30", answer);
    let answer = client.list_plans(cat.request(vm::ListPlansRequest { server_id: "nope".into() })).await;
    cat.record(VIRTUALMIN, "ListPlans", "server_id `nope`", answer);
    let answer = client.get_server_info(cat.request(vm::GetServerInfoRequest { server_id: "nope".into() })).await;
    cat.record(VIRTUALMIN, "GetServerInfo", "server_id `nope`", answer);
    let answer = client.get_server_info(cat.request(vm::GetServerInfoRequest { server_id: String::new() })).await;
    cat.record(VIRTUALMIN, "GetServerInfo", "empty server_id", answer);
    let answer =
        client.check_server_health(cat.request(vm::CheckServerHealthRequest { server_id: "nope".into() })).await;
    cat.record(VIRTUALMIN, "CheckServerHealth", "server_id `nope`", answer);
}

/// The status of the first container of a batch answer.
fn first_container_status(results: &[docker::ContainerResult]) -> Option<tonic_types::pb::Status> {
    results.first().and_then(|result| result.result.as_ref()?.status.clone())
}

#[allow(clippy::too_many_lines)] // one table: each case is a line or two
async fn docker_cases(cat: &mut Catalogue, mut client: DockerOpsClient<Channel>) {
    // Only inputs refused before the engine is asked, so the answers are the
    // same with or without a Docker engine on the machine.
    const DOCKER: &str = "DockerOps (`mesh.docker.v1.DockerOps`, refused before the engine is asked)";
    let ids = |ids: Vec<String>| docker::StartContainersRequest { container_ids: ids, max_concurrent: 0 };
    let answer = client.start_containers(cat.request(ids(Vec::new()))).await;
    cat.record(DOCKER, "StartContainers", "no container ids", answer);
    let answer = client.start_containers(cat.request(ids((0..101).map(|i| format!("c{i}")).collect()))).await;
    cat.record(DOCKER, "StartContainers", "101 container ids", answer);
    let first_result = |answer: &docker::StartContainersResponse| first_container_status(&answer.results);
    let answer = client.start_containers(cat.request(ids(vec!["../../etc/passwd".into()]))).await;
    cat.record_item(DOCKER, "StartContainers (item)", "container id `../../etc/passwd`", answer, first_result);
    let answer = client.start_containers(cat.request(ids(vec![String::new()]))).await;
    cat.record_item(DOCKER, "StartContainers (item)", "an empty container id", answer, first_result);
    let stop = |seconds: i64| docker::StopContainersRequest {
        container_ids: vec!["c1".into()],
        max_concurrent: 0,
        stop_timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
    };
    let answer = client.stop_containers(cat.request(stop(86_400))).await;
    cat.record(DOCKER, "StopContainers", "stop_timeout of 1 day (max 120 s)", answer);
    let answer = client.stop_containers(cat.request(stop(-1))).await;
    cat.record(DOCKER, "StopContainers", "stop_timeout of -1 s", answer);
    let restart = docker::RestartContainersRequest {
        container_ids: vec!["c1".into()],
        max_concurrent: 0,
        stop_timeout: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
    };
    let answer = client.restart_containers(cat.request(restart)).await;
    cat.record(DOCKER, "RestartContainers", "stop_timeout of 1 day", answer);
    let stats = docker::GetStatsRequest {
        container_ids: vec!["c1".into()],
        max_concurrent: 0,
        cpu_sample_window: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
    };
    let answer = client.get_stats(cat.request(stats)).await;
    cat.record(DOCKER, "GetStats", "cpu_sample_window of 60 s (max 10 s)", answer);
    let listing = |selectors: Vec<String>, page_size: i32, page_token: &str| docker::ListContainersRequest {
        label_selectors: selectors,
        include_stopped: true,
        page_size,
        page_token: page_token.into(),
    };
    let answer = client.list_containers(cat.request(listing(vec!["=value".into()], 10, ""))).await;
    cat.record(DOCKER, "ListContainers", "label selector `=value`", answer);
    let answer = client.list_containers(cat.request(listing(Vec::new(), -1, ""))).await;
    cat.record(DOCKER, "ListContainers", "page_size -1", answer);
    let answer = client.list_containers(cat.request(listing(Vec::new(), 1_000_000_000, ""))).await;
    cat.record(DOCKER, "ListContainers", "page_size 10^9", answer);
    let answer = client.list_containers(cat.request(listing(Vec::new(), 10, "forged-token"))).await;
    cat.record(DOCKER, "ListContainers", "a forged page_token", answer);
    let create = |specs: Vec<docker::ContainerSpec>| docker::CreateContainersRequest { specs, max_concurrent: 0 };
    let answer = client.create_containers(cat.request(create(Vec::new()))).await;
    cat.record(DOCKER, "CreateContainers", "no specs", answer);
    let no_image = docker::ContainerSpec { name: "catalogue".into(), ..Default::default() };
    let answer = client.create_containers(cat.request(create(vec![no_image]))).await;
    let first_result = |answer: &docker::CreateContainersResponse| first_container_status(&answer.results);
    cat.record_item(DOCKER, "CreateContainers (item)", "a spec without an image", answer, first_result);
    let joins_another =
        docker::ContainerSpec { image: "catalogue".into(), network_mode: "container:web".into(), ..Default::default() };
    let answer = client.create_containers(cat.request(create(vec![joins_another]))).await;
    cat.record_item(DOCKER, "CreateContainers (item)", "network_mode `container:web`", answer, first_result);
    let remove = docker::RemoveContainersRequest { container_ids: Vec::new(), ..Default::default() };
    let answer = client.remove_containers(cat.request(remove)).await;
    cat.record(DOCKER, "RemoveContainers", "no container ids", answer);
    let watch = docker::WatchEventsRequest { label_selectors: vec!["=value".into()], actions: Vec::new() };
    let answer = Catalogue::first_message(client.watch_events(cat.request(watch)).await).await;
    cat.record(DOCKER, "WatchEvents", "label selector `=value`", answer);
}

async fn memory_cases(cat: &mut Catalogue, mut client: MemoryProfilerClient<Channel>) {
    const MEMORY: &str = "MemoryProfiler (`mesh.memory.v1.MemoryProfiler`)";
    let snapshots = |service: &str, page_size: i32, page_token: &str| memory::ListSnapshotsRequest {
        service: service.into(),
        page_size,
        page_token: page_token.into(),
    };
    let answer = client.list_snapshots(cat.request(snapshots("", 10, ""))).await;
    cat.record(MEMORY, "ListSnapshots", "empty service", answer);
    let answer = client.list_snapshots(cat.request(snapshots("nope", 10, ""))).await;
    cat.record(MEMORY, "ListSnapshots", "service `nope` (not watched)", answer);
    let answer = client.list_snapshots(cat.request(snapshots("cache", 1_000_000_000, ""))).await;
    cat.record(MEMORY, "ListSnapshots", "page_size 10^9", answer);
    let answer = client.list_snapshots(cat.request(snapshots("cache", -1, ""))).await;
    cat.record(MEMORY, "ListSnapshots", "page_size -1", answer);
    let answer = client.list_snapshots(cat.request(snapshots("cache", 10, "forged-token"))).await;
    cat.record(MEMORY, "ListSnapshots", "a forged page_token", answer);
    let report = memory::GetReportRequest { services: vec!["nope".into()], include_heap_profiles: false };
    let answer = client.get_report(cat.request(report)).await;
    cat.record(MEMORY, "GetReport", "service `nope`", answer);
    let answer =
        client.trigger_snapshot(cat.request(memory::TriggerSnapshotRequest { services: vec!["nope".into()] })).await;
    cat.record(MEMORY, "TriggerSnapshot", "service `nope`", answer);

    let taken = client
        .trigger_snapshot(Catalogue::setup(memory::TriggerSnapshotRequest {
            services: vec!["cache".into(), "vpnusers".into()],
        }))
        .await
        .expect("snapshots of two services")
        .into_inner()
        .snapshots;
    let id_of = |service: &str| taken.iter().find(|s| s.service == service).expect("a snapshot").snapshot_id;
    let compare =
        |from_snapshot_id, to_snapshot_id| memory::CompareSnapshotsRequest { from_snapshot_id, to_snapshot_id };
    let answer = client.compare_snapshots(cat.request(compare(id_of("cache"), 999_999_999))).await;
    cat.record(MEMORY, "CompareSnapshots", "to_snapshot_id never taken", answer);
    let answer = client.compare_snapshots(cat.request(compare(id_of("cache"), id_of("vpnusers")))).await;
    cat.record(MEMORY, "CompareSnapshots", "snapshots of two different services", answer);
    let watch = memory::WatchAlertsRequest { services: vec!["nope".into()], min_severity: 0 };
    let answer = Catalogue::first_message(client.watch_alerts(cat.request(watch)).await).await;
    cat.record(MEMORY, "WatchAlerts", "service `nope`", answer);
}

#[allow(clippy::unnecessary_wraps)] // fills an `Option` field
fn bulk_targets(targets: &[(&str, &str)]) -> Option<bulk::start_bulk_operation_request::TargetSet> {
    Some(bulk::start_bulk_operation_request::TargetSet::TargetList(bulk::TargetList {
        targets: targets
            .iter()
            .map(|(server_id, domain_name)| bulk::Target {
                server_id: (*server_id).into(),
                domain_name: (*domain_name).into(),
            })
            .collect(),
    }))
}

#[allow(clippy::too_many_lines)] // one table: each case is a line or two
async fn bulkops_cases(cat: &mut Catalogue, mut client: BulkOpsClient<Channel>) {
    const BULKOPS: &str = "BulkOps (`mesh.bulkops.v1.BulkOps`)";
    let health_check = |targets: &[(&str, &str)]| bulk::StartBulkOperationRequest {
        kind: bulk::OperationKind::HealthCheck.into(),
        target_set: bulk_targets(targets),
        mode: bulk::BulkMode::BestEffort.into(),
        ..Default::default()
    };
    let one = [(SIMULATOR, "catalogue.example.com")];
    let unspecified = bulk::StartBulkOperationRequest { kind: 0, ..health_check(&one) };
    let answer = client.start_bulk_operation(cat.request(unspecified)).await;
    cat.record(BULKOPS, "StartBulkOperation", "kind OPERATION_KIND_UNSPECIFIED", answer);
    let no_targets = bulk::StartBulkOperationRequest { target_set: None, ..health_check(&one) };
    let answer = client.start_bulk_operation(cat.request(no_targets)).await;
    cat.record(BULKOPS, "StartBulkOperation", "neither target_list nor selector", answer);
    let twice = [(SIMULATOR, "catalogue.example.com"), (SIMULATOR, "catalogue.example.com")];
    let answer = client.start_bulk_operation(cat.request(health_check(&twice))).await;
    cat.record(BULKOPS, "StartBulkOperation", "the same target twice", answer);
    let names: Vec<String> = (0..100_001).map(|i| format!("d{i}.example.com")).collect();
    let too_many: Vec<(&str, &str)> = names.iter().map(|name| (SIMULATOR, name.as_str())).collect();
    let answer = client.start_bulk_operation(cat.request(health_check(&too_many))).await;
    cat.record(BULKOPS, "StartBulkOperation", "100001 targets (max_targets 100000)", answer);
    let greedy = bulk::StartBulkOperationRequest { max_concurrency: 65, ..health_check(&one) };
    let answer = client.start_bulk_operation(cat.request(greedy)).await;
    cat.record(BULKOPS, "StartBulkOperation", "max_concurrency 65 (max 64)", answer);
    let relative_backup = bulk::StartBulkOperationRequest {
        kind: bulk::OperationKind::Backup.into(),
        options: Some(bulk::OperationOptions {
            suspend_reason: String::new(),
            backup_directory: "relative/backups".into(),
        }),
        ..health_check(&one)
    };
    let answer = client.start_bulk_operation(cat.request(relative_backup)).await;
    cat.record(BULKOPS, "StartBulkOperation", "BACKUP to `relative/backups`", answer);
    let long_key = bulk::StartBulkOperationRequest { idempotency_key: "k".repeat(129), ..health_check(&one) };
    let answer = client.start_bulk_operation(cat.request(long_key)).await;
    cat.record(BULKOPS, "StartBulkOperation", "a 129-character idempotency_key", answer);
    let answer = client.start_bulk_operation(cat.request(health_check(&[("nope", "catalogue.example.com")]))).await;
    cat.record(BULKOPS, "StartBulkOperation", "a target on server `nope` (not configured)", answer);
    let answer = client.start_bulk_operation(cat.request(health_check(&[(SIMULATOR, "")]))).await;
    cat.record(BULKOPS, "StartBulkOperation", "a target with an empty domain name", answer);
    let keyed = bulk::StartBulkOperationRequest { idempotency_key: "catalogue-job-1".into(), ..health_check(&one) };
    client.start_bulk_operation(Catalogue::setup(keyed.clone())).await.expect("the catalogue's job starts");
    let reused = bulk::StartBulkOperationRequest { max_concurrency: 2, ..keyed };
    let answer = client.start_bulk_operation(cat.request(reused)).await;
    cat.record(BULKOPS, "StartBulkOperation", "an idempotency_key already used for another request", answer);

    let get_job = |job_id: &str| bulk::GetJobRequest { job_id: job_id.into(), include_targets: false };
    let answer = client.get_job(cat.request(get_job("not-a-uuid"))).await;
    cat.record(BULKOPS, "GetJob", "job_id `not-a-uuid`", answer);
    let answer = client.get_job(cat.request(get_job(UNKNOWN_UUID))).await;
    cat.record(BULKOPS, "GetJob", "a job_id no job has", answer);
    let jobs =
        |page_size: u32, page_token: &str| bulk::ListJobsRequest { page_size, page_token: page_token.into(), state: 0 };
    let answer = client.list_jobs(cat.request(jobs(1_000_000_000, ""))).await;
    cat.record(BULKOPS, "ListJobs", "page_size 10^9", answer);
    let answer = client.list_jobs(cat.request(jobs(10, "forged-token"))).await;
    cat.record(BULKOPS, "ListJobs", "a forged page_token", answer);
    let answer = client.cancel_job(cat.request(bulk::CancelJobRequest { job_id: UNKNOWN_UUID.into() })).await;
    cat.record(BULKOPS, "CancelJob", "a job_id no job has", answer);
    let watch = bulk::WatchJobRequest { job_id: "not-a-uuid".into() };
    let answer = Catalogue::first_message(client.watch_job(cat.request(watch)).await).await;
    cat.record(BULKOPS, "WatchJob", "job_id `not-a-uuid`", answer);
    let watch = bulk::WatchJobRequest { job_id: UNKNOWN_UUID.into() };
    let answer = Catalogue::first_message(client.watch_job(cat.request(watch)).await).await;
    cat.record(BULKOPS, "WatchJob", "a job_id no job has", answer);
}
