//! `mesh cache get|set|del|invalidate|stats`: the Cache service from the
//! shell, through the gateway. Human output by default, `--json` for
//! scripts; a spinner on stderr while a call is in flight (hidden when
//! stderr is not a terminal); failures print the status code, the
//! `ErrorInfo` reason and the correlation id, and exit 1.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use mesh_kit::ConfigSource;
use mesh_proto::cache::v1 as pb;
use mesh_proto::cache::v1::cache_client::CacheClient;
use serde_json::json;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Where the gateway listens unless `--endpoint` or `MESH_ENDPOINT` says otherwise.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

#[derive(Debug, clap::Args)]
pub(crate) struct CacheArgs {
    /// The gateway to call (default: `MESH_ENDPOINT`, else `http://127.0.0.1:50051`).
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: CacheVerb,
}

#[derive(Debug, clap::Subcommand)]
enum CacheVerb {
    /// Prints the value of a key.
    Get {
        /// The key.
        key: String,
    },
    /// Stores a value.
    Set {
        /// The key.
        key: String,
        /// The value, stored as UTF-8 bytes.
        value: String,
        /// Time to live, e.g. `90s`, `5m` (default: the server's).
        #[arg(long, value_parser = humantime_duration)]
        ttl: Option<Duration>,
        /// A tag for group invalidation; repeat for several.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Removes keys.
    Del {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Removes every key with a tag, or matching a glob or a regex.
    Invalidate {
        /// Remove keys carrying any of these tags.
        #[arg(long = "tag", conflicts_with_all = ["glob", "regex"])]
        tags: Vec<String>,
        /// Remove keys matching this glob (`user:*`).
        #[arg(long, conflicts_with = "regex")]
        glob: Option<String>,
        /// Remove keys matching this regex (`^user:[0-9]+$`).
        #[arg(long)]
        regex: Option<String>,
    },
    /// Prints hit/miss counters, memory use and health.
    Stats,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    humantime_parse(text).ok_or_else(|| format!("`{text}` is not a duration like 90s or 5m"))
}

fn humantime_parse(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let amount: u64 = digits.parse().ok()?;
    let seconds = match unit {
        "ms" => return Some(Duration::from_millis(amount)),
        "s" => amount,
        "m" => amount.checked_mul(60)?,
        "h" => amount.checked_mul(3600)?,
        "d" => amount.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

pub(crate) async fn run(args: CacheArgs) -> ExitCode {
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| ConfigSource::from_process().var("MESH_ENDPOINT").map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let spinner = spinner(&endpoint);
    let outcome = call(&endpoint, args.verb).await;
    spinner.finish_and_clear();
    match outcome {
        Ok(output) => {
            if args.json {
                println!("{}", output.json);
            } else {
                println!("{}", output.text);
            }
            ExitCode::SUCCESS
        }
        Err(CallError::Connect(message)) => {
            eprintln!("mesh: cannot reach {endpoint}: {message}");
            ExitCode::FAILURE
        }
        Err(CallError::Status(status)) => {
            report_status(&status, args.json);
            ExitCode::FAILURE
        }
    }
}

fn spinner(endpoint: &str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        spinner.set_style(style);
    }
    spinner.set_message(format!("calling {endpoint}"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

struct Output {
    text: String,
    json: serde_json::Value,
}

enum CallError {
    Connect(String),
    Status(tonic::Status),
}

impl From<tonic::Status> for CallError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

async fn call(endpoint: &str, verb: CacheVerb) -> Result<Output, CallError> {
    let channel = Channel::from_shared(endpoint.to_owned())
        .map_err(|e| CallError::Connect(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| CallError::Connect(e.to_string()))?;
    let mut client = CacheClient::new(channel);
    match verb {
        CacheVerb::Get { key } => {
            let response = client.get(pb::GetRequest { key: key.clone() }).await?.into_inner();
            let value = String::from_utf8_lossy(&response.value).into_owned();
            let text = if response.found { value.clone() } else { format!("(miss) {key}") };
            let json = json!({ "key": key, "found": response.found, "value": value, "tags": response.tags,
                "expire_time": response.expire_time.map(|t| t.to_string()) });
            Ok(Output { text, json })
        }
        CacheVerb::Set { key, value, ttl, tags } => {
            let ttl = ttl.map(|d| {
                prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 0 })
            });
            let request =
                pb::SetRequest { key: key.clone(), value: value.into_bytes(), ttl, tags, lease_id: String::new() };
            let response = client.set(request).await?.into_inner();
            let expires = response.expire_time.map(|t| t.to_string()).unwrap_or_default();
            Ok(Output {
                text: format!("stored {key} (expires {expires})"),
                json: json!({ "key": key, "expire_time": expires }),
            })
        }
        CacheVerb::Del { keys } => {
            let response = client.delete_many(pb::DeleteManyRequest { keys: keys.clone() }).await?.into_inner();
            Ok(Output {
                text: format!("deleted {} of {} keys", response.deleted_count, keys.len()),
                json: json!({ "deleted_count": response.deleted_count, "requested": keys.len() }),
            })
        }
        CacheVerb::Invalidate { tags, glob, regex } => {
            let removed = if let Some(pattern) = glob {
                let request = pb::InvalidatePatternRequest { pattern, syntax: pb::PatternSyntax::Glob.into() };
                client.invalidate_pattern(request).await?.into_inner().removed_count
            } else if let Some(pattern) = regex {
                let request = pb::InvalidatePatternRequest { pattern, syntax: pb::PatternSyntax::Regex.into() };
                client.invalidate_pattern(request).await?.into_inner().removed_count
            } else {
                client.invalidate_tags(pb::InvalidateTagsRequest { tags }).await?.into_inner().removed_count
            };
            Ok(Output { text: format!("removed {removed} keys"), json: json!({ "removed_count": removed }) })
        }
        CacheVerb::Stats => {
            let stats = client.get_stats(pb::GetStatsRequest {}).await?.into_inner();
            let health = client.get_health(pb::GetHealthRequest {}).await?.into_inner();
            let verdict = if health.state == pb::HealthState::Healthy as i32 { "healthy" } else { "degraded" };
            let mut text = format!(
                "state        {verdict}\nentries      {} (max {})\nmemory       {} / {} bytes\nhits         {}\nmisses       {}\nhit ratio    {:.3}\nevictions    {}\nexpirations  {}\nleases       {}",
                stats.entries,
                stats.max_entries,
                stats.memory_used_bytes,
                stats.memory_budget_bytes,
                stats.hits,
                stats.misses,
                stats.hit_ratio,
                stats.evictions,
                stats.expirations,
                stats.active_leases
            );
            for reason in &health.reasons {
                let _ = write!(text, "\nwhy degraded {reason}");
            }
            for tag in &stats.tag_counts {
                let _ = write!(text, "\ntag {:<10} {} keys", tag.tag, tag.key_count);
            }
            let json = json!({
                "state": verdict, "reasons": health.reasons, "entries": stats.entries, "max_entries": stats.max_entries,
                "memory_used_bytes": stats.memory_used_bytes, "memory_budget_bytes": stats.memory_budget_bytes,
                "hits": stats.hits, "misses": stats.misses, "hit_ratio": stats.hit_ratio, "evictions": stats.evictions,
                "expirations": stats.expirations, "active_leases": stats.active_leases,
                "tag_counts": stats.tag_counts.iter().map(|t| json!({ "tag": t.tag, "key_count": t.key_count })).collect::<Vec<_>>(),
            });
            Ok(Output { text, json })
        }
    }
}

pub(crate) fn report_status(status: &tonic::Status, as_json: bool) {
    let details = status.get_error_details();
    let reason = details.error_info().map(|i| i.reason.clone()).unwrap_or_default();
    let correlation_id = details
        .error_info()
        .and_then(|i| i.metadata.get("correlation_id").cloned())
        .or_else(|| status.metadata().get("x-correlation-id").and_then(|v| v.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    if as_json {
        println!(
            "{}",
            json!({ "error": { "code": format!("{:?}", status.code()), "message": status.message(),
                "reason": reason, "correlation_id": correlation_id } })
        );
    } else {
        eprintln!("mesh: {:?}: {} (reason {reason}, correlation id {correlation_id})", status.code(), status.message());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_flags_parse() {
        for (text, expected) in [
            ("90s", Some(90)),
            ("5m", Some(300)),
            ("2h", Some(7200)),
            ("1d", Some(86_400)),
            ("5", None),
            ("m", None),
            ("5y", None),
        ] {
            assert_eq!(humantime_parse(text).map(|d| d.as_secs()), expected, "{text}");
        }
        assert_eq!(humantime_parse("250ms"), Some(Duration::from_millis(250)));
    }
}
