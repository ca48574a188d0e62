//! Decoding remote.cgi replies: HTTP status and content type first (miniserv's
//! 401/403, the HTML login page, the plain-text `ERROR:` line, the
//! `status: error` document), then the JSON envelope, then typed data.
//!
//! The listing types borrow from the body and name only the keys the gateway
//! uses; serde skips every other key without building it. That is why the
//! typed parse beats a `serde_json::Value` parse of the same bytes, and why
//! `password`, `hashed_password` and `password_for_*` are never even read
//! into memory of their own.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::domain::{BandwidthDay, ByteAmount, CalendarDate, Domain, DomainBandwidth, DomainType, Plan, ServerInfo};
use crate::error::VirtualminError;
use crate::nice_size::parse_nice_size;
use crate::params::Program;

/// Longest piece of Virtualmin's failure text kept in an error.
const MAX_FAILURE_MESSAGE_CHARS: usize = 300;

/// Checks what miniserv and remote.cgi say before any JSON is read. A 200 is
/// not yet a success: the login page, `ERROR:` and `status: error` all come
/// with 200.
pub fn check_framing(
    server_id: &str,
    program: Program,
    http_status: u16,
    content_type: &str,
    body: &[u8],
) -> Result<(), VirtualminError> {
    let server_id = server_id.to_owned();
    match http_status {
        200 => {}
        401 => return Err(VirtualminError::AuthenticationFailed { server_id }),
        403 => return Err(VirtualminError::AccessDenied { server_id }),
        404 => return Err(VirtualminError::ProgramUnavailable { server_id, program: program.name() }),
        status => return Err(VirtualminError::HttpStatus { server_id, status }),
    }
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(()),
        // Without `/virtual-server/remote.cgi` in miniserv's `sessiononly`, every request gets the login page.
        "text/html" => Err(VirtualminError::AuthenticationFailed { server_id }),
        "text/plain" => Err(plain_text_error(server_id, program, body)),
        _ => Err(VirtualminError::UnexpectedContentType { content_type: mime.chars().take(60).collect() }),
    }
}

/// remote.cgi's `api_error` document: `{"status":"error","error":"..."}`.
#[derive(Deserialize)]
struct ApiError {
    status: String,
    #[serde(default)]
    error: Option<String>,
}

/// remote.cgi's own errors, sent as text/plain even in JSON mode.
fn plain_text_error(server_id: String, program: Program, body: &[u8]) -> VirtualminError {
    if body.starts_with(b"ERROR:") {
        return VirtualminError::RemoteApiNotAllowed { server_id };
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(api_error) if api_error.status == "error" => {
            let message = api_error.error.unwrap_or_default();
            if message.contains("does not exist") {
                VirtualminError::ProgramUnavailable { server_id, program: program.name() }
            } else {
                VirtualminError::Internal {
                    reason: format!("remote.cgi refused the program: {}", first_line(&message)),
                }
            }
        }
        _ => VirtualminError::UnexpectedContentType { content_type: "text/plain".to_owned() },
    }
}

/// The top of every JSON reply. Keys arrive in random order, so `status` is
/// only known once the whole document is read.
#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct Envelope<D> {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<D>,
    #[serde(default)]
    output: Option<String>,
}

/// A successful reply: listings carry `data`, other programs `output`.
#[derive(Debug)]
pub struct Success<D> {
    /// Parsed `data`, for `list-*` programs.
    pub data: Option<D>,
    /// The program's text, for the others.
    pub output: Option<String>,
}

/// Parses the envelope, turning `status: failure` into a typed error.
/// `secrets` are scrubbed from Virtualmin's failure text.
pub fn decode<'a, D: Deserialize<'a>>(
    program: Program,
    body: &'a [u8],
    secrets: &[&str],
) -> Result<Success<D>, VirtualminError> {
    let envelope: Envelope<D> = serde_json::from_slice(body).map_err(|error| json_error(&error, body.len()))?;
    match envelope.status.as_str() {
        "success" => Ok(Success { data: envelope.data, output: envelope.output }),
        "failure" => Err(classify_failure(program, &scrub(envelope.error.as_deref().unwrap_or_default(), secrets))),
        other => Err(VirtualminError::MalformedField {
            field: "status".to_owned(),
            detail: format!("unexpected status `{}`", other.chars().take(40).collect::<String>()),
        }),
    }
}

/// A `serde_json` error, as a precise gateway error: EOF means the connection
/// closed early; anything else is not Virtualmin's JSON.
#[must_use]
pub fn json_error(error: &serde_json::Error, received_bytes: usize) -> VirtualminError {
    if error.is_eof() {
        VirtualminError::TruncatedResponse { received_bytes }
    } else {
        VirtualminError::MalformedResponse { detail: error.to_string() }
    }
}

fn scrub(message: &str, secrets: &[&str]) -> String {
    let mut text = first_line(message);
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[redacted]");
    }
    text
}

fn first_line(message: &str) -> String {
    let line = message.lines().find(|line| !line.trim().is_empty()).unwrap_or_default().trim_end();
    line.chars().take(MAX_FAILURE_MESSAGE_CHARS).collect()
}

/// Maps the first line of a failure to what it means (reference §5, §6).
fn classify_failure(program: Program, message: &str) -> VirtualminError {
    let program_name = program.name();
    if let Some(domain) = message
        .strip_prefix("Virtual server ")
        .and_then(|rest| rest.strip_suffix(" does not exist").or_else(|| rest.strip_suffix(" does not exist.")))
    {
        return VirtualminError::DomainNotFound { domain: domain.to_owned() };
    }
    if message.starts_with("No virtual server with ID") || message.starts_with("No top-level domain owned by") {
        return VirtualminError::DomainNotFound { domain: message.to_owned() };
    }
    if message == "You are already hosting this domain" {
        return VirtualminError::DomainAlreadyExists { domain: String::new() };
    }
    let lowered = message.to_ascii_lowercase();
    let rejected =
        ["quota must be", "invalid", "must be", "no plan with", "is not valid", "missing", "unknown parameter"];
    if rejected.iter().any(|marker| lowered.contains(marker)) {
        return VirtualminError::Rejected { program: program_name, message: message.to_owned() };
    }
    VirtualminError::ProgramFailed { program: program_name, message: message.to_owned() }
}

// === Borrowed string values ===

/// A string from the body: borrowed when it has no escapes.
#[derive(Debug)]
struct WireStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for WireStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = WireStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(value.to_owned())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

/// The first element of a multiline value (`"key": ["value", ...]`); `null`
/// and `[]` read as absent.
#[derive(Debug, Default)]
pub struct First<'a>(Option<Cow<'a, str>>);

impl First<'_> {
    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }

    fn owned(&self) -> Option<String> {
        self.0.as_deref().map(str::to_owned)
    }

    fn non_empty(&self) -> Option<String> {
        self.get().filter(|text| !text.is_empty()).map(str::to_owned)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for First<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FirstVisitor<'a> {
            type Value = First<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first: Option<Option<WireStr<'a>>> = seq.next_element()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first.flatten().map(|s| s.0)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(First(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(First(None))
            }
        }
        deserializer.deserialize_any(FirstVisitor(PhantomData))
    }
}

// === list-domains ===

/// One object of a multiline listing.
#[derive(Debug, Deserialize)]
pub struct RawRecord<'a, V> {
    #[serde(borrow)]
    name: WireStr<'a>,
    #[serde(default)]
    values: Option<V>,
}

/// The list-domains keys the gateway reads; every other key is skipped.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawDomainValues<'a> {
    #[serde(borrow)]
    id: First<'a>,
    #[serde(borrow, rename = "type")]
    domain_type: First<'a>,
    #[serde(borrow)]
    parent_domain: First<'a>,
    #[serde(borrow)]
    real_domain: First<'a>,
    #[serde(borrow)]
    description: First<'a>,
    #[serde(borrow)]
    username: First<'a>,
    #[serde(borrow)]
    plan_id: First<'a>,
    #[serde(borrow)]
    plan: First<'a>,
    #[serde(borrow)]
    template: First<'a>,
    #[serde(borrow)]
    features: First<'a>,
    #[serde(borrow)]
    disabled: First<'a>,
    #[serde(borrow)]
    created_unix_time: First<'a>,
    #[serde(borrow)]
    server_block_quota: First<'a>,
    #[serde(borrow)]
    server_quota: First<'a>,
    #[serde(borrow)]
    server_byte_quota_used: First<'a>,
    #[serde(borrow)]
    server_quota_used: First<'a>,
    #[serde(borrow)]
    bandwidth_byte_limit: First<'a>,
    #[serde(borrow)]
    bandwidth_limit: First<'a>,
    #[serde(borrow)]
    bandwidth_byte_usage: First<'a>,
    #[serde(borrow)]
    bandwidth_usage: First<'a>,
    #[serde(borrow)]
    databases_count: First<'a>,
    #[serde(borrow)]
    databases_byte_size: First<'a>,
    #[serde(borrow)]
    databases_size: First<'a>,
    #[serde(borrow)]
    ip_address: First<'a>,
    #[serde(borrow)]
    ipv6_address: First<'a>,
    #[serde(borrow)]
    home_directory: First<'a>,
    #[serde(borrow)]
    contact_email: First<'a>,
    #[serde(borrow)]
    php_version: First<'a>,
    #[serde(borrow)]
    ssl_cert_expiry_time: First<'a>,
    #[serde(borrow)]
    last_login_time: First<'a>,
    #[serde(borrow)]
    url: First<'a>,
}

/// The `data` of list-domains.
pub type RawDomainList<'a> = Vec<RawRecord<'a, RawDomainValues<'a>>>;

/// Parses a list-domains reply into domains.
pub fn parse_domain_list(body: &[u8]) -> Result<Vec<Domain>, VirtualminError> {
    let success: Success<RawDomainList<'_>> = decode(Program::ListDomains, body, &[])?;
    let records = success.data.ok_or_else(|| missing("data"))?;
    records.iter().map(domain_from_record).collect()
}

fn missing(field: &str) -> VirtualminError {
    VirtualminError::MalformedField { field: field.to_owned(), detail: "missing".to_owned() }
}

fn malformed(field: &str, detail: impl Into<String>) -> VirtualminError {
    VirtualminError::MalformedField { field: field.to_owned(), detail: detail.into() }
}

fn domain_from_record(record: &RawRecord<'_, RawDomainValues<'_>>) -> Result<Domain, VirtualminError> {
    let name = record.name.0.as_ref();
    // A table-mode reply (no `multiline=`) has rows with empty values; the id is always printed in multiline mode.
    let values = record.values.as_ref().ok_or_else(|| missing("values"))?;
    let id = values.id.owned().ok_or_else(|| malformed("id", format!("missing for `{name}`; was multiline sent?")))?;
    Ok(Domain {
        name: name.to_owned(),
        id,
        domain_type: values.domain_type.get().map_or(DomainType::Unknown, DomainType::from_wire),
        parent_domain: values.parent_domain.non_empty(),
        alias_target: values.real_domain.non_empty(),
        description: values.description.owned().unwrap_or_default(),
        owner_username: values.username.owned().unwrap_or_default(),
        plan_id: values.plan_id.non_empty(),
        plan_name: values.plan.non_empty(),
        template_name: values.template.non_empty(),
        features: values.features.get().unwrap_or_default().split_ascii_whitespace().map(str::to_owned).collect(),
        suspension_reason: values.disabled.owned(),
        created_at: unix_time("created_unix_time", &values.created_unix_time)?,
        disk_quota: block_quota(&values.server_block_quota, &values.server_quota)?,
        disk_used: bytes_or_human(
            "server_byte_quota_used",
            &values.server_byte_quota_used,
            "server_quota_used",
            &values.server_quota_used,
        )?,
        bandwidth_limit: bytes_or_human(
            "bandwidth_byte_limit",
            &values.bandwidth_byte_limit,
            "bandwidth_limit",
            &values.bandwidth_limit,
        )?,
        bandwidth_used: bytes_or_human(
            "bandwidth_byte_usage",
            &values.bandwidth_byte_usage,
            "bandwidth_usage",
            &values.bandwidth_usage,
        )?,
        databases_size: bytes_or_human(
            "databases_byte_size",
            &values.databases_byte_size,
            "databases_size",
            &values.databases_size,
        )?,
        database_count: match values.databases_count.get() {
            Some(text) => text.parse().map_err(|_| malformed("databases_count", "not a count"))?,
            None => 0,
        },
        ip_address: values.ip_address.get().and_then(|text| text.split_whitespace().next()).map(str::to_owned),
        ipv6_address: values.ipv6_address.get().and_then(|text| text.split_whitespace().next()).map(str::to_owned),
        home_directory: values.home_directory.non_empty(),
        contact_email: values.contact_email.non_empty(),
        php_version: values.php_version.non_empty(),
        ssl_cert_expires_at: unix_time("ssl_cert_expiry_time", &values.ssl_cert_expiry_time)?,
        last_login_at: unix_time("last_login_time", &values.last_login_time)?,
        url: values.url.non_empty(),
    })
}

fn unix_time(field: &str, value: &First<'_>) -> Result<Option<SystemTime>, VirtualminError> {
    value
        .get()
        .map(|text| {
            text.parse::<u64>()
                .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
                .map_err(|_| malformed(field, "not a unix time"))
        })
        .transpose()
}

/// A byte-exact field (`Unlimited` or digits), else the human one.
fn bytes_or_human(
    exact_field: &str,
    exact: &First<'_>,
    human_field: &str,
    human: &First<'_>,
) -> Result<Option<ByteAmount>, VirtualminError> {
    if let Some(text) = exact.get() {
        return exact_bytes(exact_field, text).map(Some);
    }
    human.get().map(|text| parse_nice_size(text).map_err(|error| malformed(human_field, error.to_string()))).transpose()
}

fn exact_bytes(field: &str, text: &str) -> Result<ByteAmount, VirtualminError> {
    if text == "Unlimited" {
        return Ok(ByteAmount::Unlimited);
    }
    text.parse().map(ByteAmount::Exact).map_err(|_| malformed(field, "not a byte count"))
}

/// Disk quota: blocks of 1024 bytes on Linux (`quota_bsize`), else the human size.
fn block_quota(blocks: &First<'_>, human: &First<'_>) -> Result<Option<ByteAmount>, VirtualminError> {
    const QUOTA_BLOCK_BYTES: u64 = 1024;
    match blocks.get() {
        Some("Unlimited") => Ok(Some(ByteAmount::Unlimited)),
        Some(text) => {
            let blocks: u64 = text.parse().map_err(|_| malformed("server_block_quota", "not a block count"))?;
            let bytes =
                blocks.checked_mul(QUOTA_BLOCK_BYTES).ok_or_else(|| malformed("server_block_quota", "too large"))?;
            Ok(Some(ByteAmount::Exact(bytes)))
        }
        None => bytes_or_human("server_block_quota", &First(None), "server_quota", human),
    }
}

// === list-plans ===

/// The list-plans keys the gateway reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawPlanValues<'a> {
    #[serde(borrow)]
    name: First<'a>,
    #[serde(borrow)]
    server_block_quota: First<'a>,
    #[serde(borrow)]
    server_quota: First<'a>,
    #[serde(borrow)]
    maximum_bw: First<'a>,
    #[serde(borrow)]
    maximum_doms: First<'a>,
    #[serde(borrow)]
    maximum_mailbox: First<'a>,
    #[serde(borrow)]
    maximum_dbs: First<'a>,
    #[serde(borrow)]
    maximum_alias: First<'a>,
}

/// Parses a list-plans reply.
pub fn parse_plan_list(body: &[u8]) -> Result<Vec<Plan>, VirtualminError> {
    let success: Success<Vec<RawRecord<'_, RawPlanValues<'_>>>> = decode(Program::ListPlans, body, &[])?;
    let records = success.data.ok_or_else(|| missing("data"))?;
    records
        .iter()
        .map(|record| {
            let values = record.values.as_ref().ok_or_else(|| missing("values"))?;
            Ok(Plan {
                id: record.name.0.to_string(),
                name: values.name.owned().unwrap_or_default(),
                disk_quota: block_quota(&values.server_block_quota, &values.server_quota)?,
                bandwidth_limit: values.maximum_bw.get().map(|text| exact_bytes("maximum_bw", text)).transpose()?,
                max_domains: count_limit("maximum_doms", &values.maximum_doms)?,
                max_mailboxes: count_limit("maximum_mailbox", &values.maximum_mailbox)?,
                max_databases: count_limit("maximum_dbs", &values.maximum_dbs)?,
                max_aliases: count_limit("maximum_alias", &values.maximum_alias)?,
            })
        })
        .collect()
}

fn count_limit(field: &str, value: &First<'_>) -> Result<Option<u64>, VirtualminError> {
    match value.get() {
        None | Some("Unlimited") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| malformed(field, "not a count")),
    }
}

// === list-bandwidth ===

#[derive(Deserialize)]
struct RawBandwidth {
    name: String,
    #[serde(default)]
    bw: Option<Vec<std::collections::BTreeMap<String, Option<String>>>>,
}

/// Parses a list-bandwidth reply sent with `simple-multiline=` (the only
/// usable shape; without it the converter loses the first domain's days).
pub fn parse_bandwidth(body: &[u8]) -> Result<Vec<DomainBandwidth>, VirtualminError> {
    let success: Success<Vec<RawBandwidth>> = decode(Program::ListBandwidth, body, &[])?;
    let records = success.data.ok_or_else(|| missing("data"))?;
    records
        .into_iter()
        .map(|record| {
            let days = record.bw.ok_or_else(|| malformed("bw", "missing; was simple-multiline sent?"))?;
            let days = days
                .into_iter()
                .map(|mut day| {
                    let date_text = day.remove("date").flatten().ok_or_else(|| missing("date"))?;
                    let date = CalendarDate::parse(&date_text).ok_or_else(|| malformed("date", "not YYYY-MM-DD"))?;
                    let mut traffic = Vec::with_capacity(day.len());
                    for (kind, bytes) in day {
                        let bytes = bytes.unwrap_or_default();
                        let bytes: u64 = bytes.parse().map_err(|_| malformed(&kind, "not a byte count"))?;
                        traffic.push((kind, bytes));
                    }
                    traffic.sort_by_key(|(kind, _)| traffic_order(kind));
                    Ok(BandwidthDay { date, traffic })
                })
                .collect::<Result<Vec<_>, VirtualminError>>()?;
            Ok(DomainBandwidth { domain_name: record.name, days })
        })
        .collect()
}

/// Virtualmin's feature order (web before mail in reports reads better, but keep its order).
fn traffic_order(kind: &str) -> (u8, String) {
    let rank = match kind {
        "web" => 0,
        "mail" => 1,
        "ftp" => 3,
        _ => 2,
    };
    (rank, kind.to_owned())
}

// === info and text outputs ===

/// Parses the text `info` prints: `key: value`, nested `    key: value`, lists `    * item`.
#[must_use]
pub fn parse_server_info(output: &str) -> ServerInfo {
    let mut info = ServerInfo::default();
    let mut section = "";
    let mut list: Vec<&str> = Vec::new();
    let finish_list = |section: &str, list: &mut Vec<&str>, info: &mut ServerInfo| {
        match section {
            "load" => info.load_averages = list.iter().filter_map(|item| item.parse().ok()).collect(),
            "mem" => {
                let kib: Vec<u64> = list.iter().filter_map(|item| item.parse().ok()).collect();
                // Saturating: the text is the server's, and a KiB count over 2^54 must not panic.
                info.memory_total_bytes = kib.first().copied().unwrap_or_default().saturating_mul(1024);
                info.memory_free_bytes = kib.get(1).copied().unwrap_or_default().saturating_mul(1024);
            }
            _ => {}
        }
        list.clear();
    };
    for line in output.lines() {
        if let Some(nested) = line.strip_prefix("    ") {
            if let Some(item) = nested.strip_prefix("* ") {
                list.push(item.trim());
            } else if let Some((key, value)) = nested.split_once(':') {
                let value = value.trim().to_owned();
                match (section, key) {
                    ("host", "hostname") => info.reported_hostname = value,
                    ("host", "os") => info.os = value,
                    ("host", "virtualmin version") => info.virtualmin_version = value,
                    ("host", "virtualmin edition") => info.virtualmin_edition = value,
                    ("host", "webmin version") => info.webmin_version = value,
                    ("kernel", "version") => info.kernel_version = value,
                    ("fcount", "doms") => info.domain_count = value.parse().unwrap_or_default(),
                    _ => {}
                }
            }
            continue;
        }
        finish_list(section, &mut list, &mut info);
        let Some((key, value)) = line.split_once(':') else { continue };
        section = key;
        let value = value.trim();
        match key {
            "disk_total" => info.disk_total_bytes = value.parse().unwrap_or_default(),
            "disk_free" => info.disk_free_bytes = value.parse().unwrap_or_default(),
            "procs" => info.process_count = value.parse().unwrap_or_default(),
            _ => {}
        }
    }
    finish_list(section, &mut list, &mut info);
    info
}

/// The `Final size was 1.24 GiB` of a backup-domain run.
#[must_use]
pub fn backup_final_size(output: &str) -> Option<ByteAmount> {
    let line = output.lines().find_map(|line| line.split_once("Final size was ").map(|(_, size)| size))?;
    parse_nice_size(line.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        // Copied verbatim from the shared reference, so a clean clone can run these tests.
        let path = format!("{}/tests/samples/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn three_domain_sample_parses_to_exact_values() {
        let domains = parse_domain_list(&sample("list-domains.multiline.3.json")).unwrap();
        let names: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["archive-example.org", "example.com", "shop.example.com"]);

        let archive = &domains[0];
        assert_eq!(archive.domain_type, DomainType::TopLevel);
        assert_eq!(archive.suspension_reason.as_deref(), Some("Manually (unpaid invoice)"));
        assert_eq!(archive.disk_quota, Some(ByteAmount::Unlimited));
        assert_eq!(archive.bandwidth_limit, Some(ByteAmount::Unlimited));
        assert_eq!(archive.bandwidth_used, Some(ByteAmount::Exact(734)));
        assert_eq!(archive.created_at, Some(UNIX_EPOCH + Duration::from_secs(1_609_502_400)));

        let example = &domains[1];
        assert_eq!(example.domain_type, DomainType::TopLevel);
        assert_eq!(example.disk_quota, Some(ByteAmount::Exact(2_147_483_648 * 1024)));
        assert_eq!(example.disk_used, Some(ByteAmount::Exact(1_649_267_441 * 1024)));
        assert_eq!(example.bandwidth_used, Some(ByteAmount::Exact(3 * (1 << 40) + 7)));
        assert_eq!(example.databases_size, Some(ByteAmount::Exact(52_428_800 + 16_384)));
        assert_eq!(example.database_count, 2);
        assert_eq!(example.ip_address.as_deref(), Some("203.0.113.10"));
        assert!(example.suspension_reason.is_none());

        let shop = &domains[2];
        assert_eq!(shop.domain_type, DomainType::SubServer);
        assert_eq!(shop.parent_domain.as_deref(), Some("example.com"));
        assert_eq!(shop.disk_quota, None);
    }

    #[test]
    fn alias_sample_parses() {
        let domains = parse_domain_list(&sample("list-domains.multiline.alias.json")).unwrap();
        assert_eq!(domains.len(), 1);
        assert_eq!(domains[0].domain_type, DomainType::Alias);
        assert_eq!(domains[0].alias_target.as_deref(), Some("example.com"));
        assert_eq!(domains[0].id, "160443091940830");
        assert_eq!(domains[0].features, ["dir", "dns", "mail", "web"]);
    }

    #[test]
    fn thousand_domain_sample_parses_and_prefers_byte_fields() {
        let body = sample("list-domains.multiline.1000.min.json");
        let domains = parse_domain_list(&body).unwrap();
        assert_eq!(domains.len(), 1000);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for (domain, raw) in domains.iter().zip(value["data"].as_array().unwrap()) {
            assert_eq!(domain.name, raw["name"].as_str().unwrap());
            if let Some(used) = raw["values"]["server_byte_quota_used"][0].as_str() {
                assert_eq!(domain.disk_used, Some(ByteAmount::Exact(used.parse().unwrap())));
            }
        }
        assert!(domains.iter().any(|d| d.domain_type == DomainType::Alias));
        assert!(domains.iter().any(Domain::is_suspended));
    }

    #[test]
    fn table_mode_reply_is_refused_precisely() {
        let error = parse_domain_list(&sample("list-domains.table.json")).unwrap_err();
        assert_eq!(error.reason(), "MALFORMED_FIELD", "{error}");
    }

    #[test]
    fn missing_domain_is_not_found() {
        let error = parse_domain_list(&sample("failure.list-domains-missing.json")).unwrap_err();
        assert_eq!(error, VirtualminError::DomainNotFound { domain: "nosuch.example".into() });
    }

    #[test]
    fn failures_are_classified() {
        let exists = decode::<IgnoredAny>(Program::CreateDomain, &sample("failure.create-domain-exists.json"), &[]);
        assert_eq!(exists.unwrap_err().reason(), "DOMAIN_ALREADY_EXISTS");
        let disabled =
            decode::<IgnoredAny>(Program::DisableDomain, &sample("failure.disable-domain-already-disabled.json"), &[]);
        assert_eq!(
            disabled.unwrap_err(),
            VirtualminError::ProgramFailed {
                program: "disable-domain",
                message: "Virtual server archive-example.org is already disabled".into()
            }
        );
    }

    #[test]
    fn failure_text_is_scrubbed_of_secrets() {
        let body = br#"{"status":"failure","command":"create-domain","error":"Password hunter2 is too short","full_error":"x"}"#;
        let error = decode::<IgnoredAny>(Program::CreateDomain, body, &["hunter2"]).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn framing_errors_are_precise() {
        let check = |status, content_type, body: &[u8]| {
            check_framing("vm1", Program::ListDomains, status, content_type, body).unwrap_err().reason()
        };
        assert_eq!(check(401, "text/html; Charset=utf-8", b"<html>"), "VIRTUALMIN_AUTH_FAILED");
        assert_eq!(check(200, "text/html", b"<html>login</html>"), "VIRTUALMIN_AUTH_FAILED");
        assert_eq!(check(200, "text/plain", &sample("error.remote-not-allowed.txt")), "REMOTE_API_NOT_ALLOWED");
        assert_eq!(check(200, "text/plain", &sample("error.remote-program-missing.json")), "PROGRAM_UNAVAILABLE");
        assert_eq!(check(403, "text/html", b""), "VIRTUALMIN_ACCESS_DENIED");
        assert_eq!(check(503, "text/html", b""), "VIRTUALMIN_HTTP_ERROR");
        assert_eq!(check(200, "image/png", b""), "UNEXPECTED_CONTENT_TYPE");
        check_framing("vm1", Program::Info, 200, "application/json", b"{}").unwrap();
    }

    #[test]
    fn truncated_and_malformed_bodies_are_told_apart() {
        let body = sample("list-domains.multiline.3.json");
        let truncated = parse_domain_list(&body[..body.len() / 2]).unwrap_err();
        assert_eq!(truncated.reason(), "TRUNCATED_RESPONSE");
        let malformed = parse_domain_list(b"{\"status\":\"success\",\"data\":[{]}").unwrap_err();
        assert_eq!(malformed.reason(), "MALFORMED_RESPONSE");
    }

    #[test]
    fn plans_sample_parses() {
        let plans = parse_plan_list(&sample("list-plans.multiline.json")).unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].id, "0");
        assert_eq!(plans[0].name, "Default Plan");
        assert_eq!(plans[0].disk_quota, Some(ByteAmount::Unlimited));
        assert_eq!(plans[0].max_domains, None);
        assert_eq!(plans[1].name, "Starter 5G");
        assert_eq!(plans[1].disk_quota, Some(ByteAmount::Exact(5_242_880 * 1024)));
        assert_eq!(plans[1].bandwidth_limit, Some(ByteAmount::Exact(107_374_182_400)));
    }

    #[test]
    fn bandwidth_sample_parses_and_the_mangled_shape_is_refused() {
        let usage = parse_bandwidth(&sample("list-bandwidth.simple-multiline.json")).unwrap();
        assert_eq!(usage.len(), 2);
        assert_eq!(usage[1].domain_name, "example.com");
        assert_eq!(usage[1].days.len(), 7);
        assert_eq!(usage[1].days[6].date.to_string(), "2025-11-23");
        assert_eq!(usage[1].days[6].traffic, [("web".to_owned(), 137_978_621), ("mail".to_owned(), 293_917)]);
        assert!(parse_bandwidth(&sample("list-bandwidth.json")).is_err());
    }

    #[test]
    fn info_sample_parses() {
        let success: Success<IgnoredAny> = decode(Program::Info, &sample("info.success.json"), &[]).unwrap();
        let info = parse_server_info(&success.output.unwrap());
        assert_eq!(info.reported_hostname, "vm1.hosting.example");
        assert_eq!(info.virtualmin_version, "8.1.0");
        assert_eq!(info.webmin_version, "2.660");
        assert_eq!(info.virtualmin_edition, "GPL");
        assert_eq!(info.disk_total_bytes, 536_870_912_000);
        assert_eq!(info.disk_free_bytes, 412_318_228_480);
        assert_eq!(info.memory_total_bytes, 16_365_020 * 1024);
        assert_eq!(info.load_averages, [0.42, 0.38, 0.35]);
        assert_eq!(info.domain_count, 1000);
        assert_eq!(info.process_count, 287);
    }

    #[test]
    fn backup_size_is_a_range() {
        let success: Success<IgnoredAny> =
            decode(Program::BackupDomain, &sample("backup-domain.success.json"), &[]).unwrap();
        let size = backup_final_size(&success.output.unwrap()).unwrap();
        assert_eq!(size, parse_nice_size("1.24 GiB").unwrap());
    }

    /// `fuzz/virtualmin_wire` found that a memory size in KiB over 2^54 overflowed
    /// the conversion to bytes (a panic where overflow checks are on).
    #[test]
    fn info_with_a_huge_memory_size_saturates() {
        let info = parse_server_info("mem: \n    * 18446744073709551615\n    * 18014398509481984\n");
        assert_eq!(info.memory_total_bytes, u64::MAX);
        assert_eq!(info.memory_free_bytes, u64::MAX);
    }
}
