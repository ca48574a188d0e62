//! `mesh bulk suspend|activate|backup|health`: a BulkOps job from the shell,
//! through the gateway. It starts the job, follows it with `WatchJob` on an
//! indicatif progress bar (stderr, hidden when stderr is not a terminal or
//! with `--json`), and ends with a summary table, or one JSON document for
//! scripts. Exit status 0 when the job succeeded, 1 otherwise.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mesh_kit::ConfigSource;
use mesh_proto::bulkops::v1 as pb;
use mesh_proto::bulkops::v1::bulk_ops_client::BulkOpsClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::cache_cli::report_status;

/// Where the gateway listens unless `--endpoint` or `MESH_ENDPOINT` says otherwise.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

#[derive(Debug, clap::Args)]
pub(crate) struct BulkArgs {
    /// The gateway to call (default: `MESH_ENDPOINT`, else `http://127.0.0.1:50051`).
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// Print one JSON document instead of the progress bar and table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: BulkVerb,
}

#[derive(Debug, clap::Subcommand)]
enum BulkVerb {
    /// Suspends domains (undone by activating them).
    Suspend {
        #[command(flatten)]
        targets: TargetArgs,
        /// The reason Virtualmin records.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Activates suspended domains.
    Activate {
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Backs domains up to `<directory>/<domain>.tar.gz` on their server.
    Backup {
        #[command(flatten)]
        targets: TargetArgs,
        /// An absolute directory on the Virtualmin server.
        #[arg(long)]
        directory: String,
    },
    /// Checks the server's health and that it hosts each domain.
    Health {
        #[command(flatten)]
        targets: TargetArgs,
    },
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct DomainSource {
    /// A domain; repeat for several.
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// A file with one domain per line (blank lines and `#` comments ignored).
    #[arg(long)]
    domains_from: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// The Virtualmin server id (see `VirtualminGateway.ListServers`).
    #[arg(long)]
    server: String,
    #[command(flatten)]
    source: DomainSource,
    /// All or nothing: stop at the first failure and undo what was done.
    #[arg(long)]
    atomic: bool,
    /// Most domains at once (default: the service's).
    #[arg(long, default_value_t = 0)]
    concurrency: u32,
    /// Makes a retry of this command return the same job instead of a new one.
    #[arg(long, default_value = "")]
    idempotency_key: String,
}

pub(crate) async fn run(args: BulkArgs) -> ExitCode {
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| ConfigSource::from_process().var("MESH_ENDPOINT").map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let request = match start_request(args.verb) {
        Ok(request) => request,
        Err(message) => {
            eprintln!("mesh: {message}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    let channel = match Channel::from_shared(endpoint.clone()) {
        Ok(endpoint) => endpoint.connect_timeout(Duration::from_secs(5)).connect().await,
        Err(error) => {
            eprintln!("mesh: {endpoint} is not a URL: {error}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    let mut client = match channel {
        Ok(channel) => BulkOpsClient::new(channel),
        Err(error) => {
            eprintln!("mesh: cannot reach {endpoint}: {error}");
            return ExitCode::FAILURE;
        }
    };
    match follow(&mut client, request, args.json).await {
        Ok(job) => {
            if args.json {
                println!("{}", job_json(&job.0, &job.1));
            } else {
                println!("{}", summary_table(&job.0, &job.1));
            }
            if job.0.state() == pb::JobState::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(status) => {
            report_status(&status, args.json);
            ExitCode::FAILURE
        }
    }
}

fn start_request(verb: BulkVerb) -> Result<pb::StartBulkOperationRequest, String> {
    let (kind, targets, options) = match verb {
        BulkVerb::Suspend { targets, reason } => {
            (pb::OperationKind::Suspend, targets, pb::OperationOptions { suspend_reason: reason, ..Default::default() })
        }
        BulkVerb::Activate { targets } => (pb::OperationKind::Activate, targets, pb::OperationOptions::default()),
        BulkVerb::Backup { targets, directory } => (
            pb::OperationKind::Backup,
            targets,
            pb::OperationOptions { backup_directory: directory, ..Default::default() },
        ),
        BulkVerb::Health { targets } => (pb::OperationKind::HealthCheck, targets, pb::OperationOptions::default()),
    };
    let domains = match &targets.source.domains_from {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            domains_in(&text)
        }
        None => targets.source.domains.clone(),
    };
    Ok(pb::StartBulkOperationRequest {
        kind: kind.into(),
        target_set: Some(pb::start_bulk_operation_request::TargetSet::TargetList(pb::TargetList {
            targets: domains
                .into_iter()
                .map(|domain_name| pb::Target { server_id: targets.server.clone(), domain_name })
                .collect(),
        })),
        mode: if targets.atomic { pb::BulkMode::Atomic } else { pb::BulkMode::BestEffort }.into(),
        max_concurrency: targets.concurrency,
        idempotency_key: targets.idempotency_key,
        options: Some(options),
    })
}

/// The domains of a `--domains-from` file.
fn domains_in(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).map(str::to_owned).collect()
}

/// Starts the job and follows it to its end; returns the final job and every target's result.
async fn follow(
    client: &mut BulkOpsClient<Channel>,
    request: pb::StartBulkOperationRequest,
    quiet: bool,
) -> Result<(pb::Job, Vec<pb::TargetResult>), tonic::Status> {
    let started = client.start_bulk_operation(request).await?.into_inner();
    let total = started.job.as_ref().and_then(|job| job.counts).map_or(0, |counts| counts.total);
    let bar = ProgressBar::new(u64::from(total));
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed}]") {
        bar.set_style(style);
    }
    bar.set_message(format!("job {}", started.job_id));
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: started.job_id.clone() }).await?.into_inner();
    let mut last = started.job;
    while let Some(message) = stream.message().await? {
        if let Some(counts) = message.job.as_ref().and_then(|job| job.counts) {
            bar.set_position(u64::from(counts.total - counts.pending - counts.in_flight));
            let eta = message.eta.map_or(String::new(), |eta| format!(", eta {}s", eta.seconds));
            bar.set_message(format!("{} ok, {} failed{eta}", counts.succeeded, counts.failed));
        }
        last = message.job.or(last);
    }
    bar.finish_and_clear();
    let job = last.unwrap_or_default();
    let targets =
        client.get_job(pb::GetJobRequest { job_id: started.job_id, include_targets: true }).await?.into_inner().targets;
    Ok((job, targets))
}

/// A duration in seconds, for display (sub-microsecond precision is not needed).
#[allow(clippy::cast_precision_loss)]
fn seconds(duration: prost_types::Duration) -> f64 {
    duration.seconds as f64 + f64::from(duration.nanos) / 1e9
}

fn state_word(state: pb::JobState) -> &'static str {
    state.as_str_name().trim_start_matches("JOB_STATE_")
}

fn summary_table(job: &pb::Job, targets: &[pb::TargetResult]) -> String {
    let counts = job.counts.unwrap_or_default();
    let result = job.result.clone().unwrap_or_default();
    let mut text = String::new();
    let _ = writeln!(text, "job        {}", job.job_id);
    let _ = writeln!(text, "state      {}", state_word(job.state()));
    let _ = writeln!(
        text,
        "targets    {} total, {} succeeded, {} failed, {} skipped, {} undone, {} not undone",
        counts.total, counts.succeeded, counts.failed, counts.skipped, counts.compensated, counts.compensation_failed
    );
    let processing_seconds = result.processing_time.map_or(0.0, seconds);
    let _ = writeln!(
        text,
        "result     {} processed, success rate {:.1} %, rollback {}, {processing_seconds:.2} s",
        result.total_processed,
        result.success_rate * 100.0,
        if result.rollback_performed { "performed" } else { "not needed" },
    );
    let problems: Vec<&pb::TargetResult> =
        targets.iter().filter(|t| t.error.is_some() || t.compensation_error.is_some()).collect();
    if !problems.is_empty() {
        let _ = writeln!(text, "\n{:<40} {:<22} WHY", "DOMAIN", "STATE");
        for target in problems {
            let domain = target.target.as_ref().map_or("", |t| t.domain_name.as_str());
            let why = target
                .error
                .as_ref()
                .or(target.compensation_error.as_ref())
                .map_or(String::new(), |s| s.message.clone());
            let state = target.state().as_str_name().trim_start_matches("TARGET_STATE_");
            let _ = writeln!(text, "{domain:<40} {state:<22} {why}");
        }
    }
    text.trim_end().to_owned()
}

fn job_json(job: &pb::Job, targets: &[pb::TargetResult]) -> serde_json::Value {
    let counts = job.counts.unwrap_or_default();
    let result = job.result.clone().unwrap_or_default();
    json!({
        "job_id": job.job_id,
        "state": state_word(job.state()),
        "counts": { "total": counts.total, "succeeded": counts.succeeded, "failed": counts.failed,
            "skipped": counts.skipped, "compensated": counts.compensated, "compensation_failed": counts.compensation_failed },
        "total_processed": result.total_processed,
        "successful_count": result.successful_count,
        "failed_count": result.failed_count,
        "success_rate": result.success_rate,
        "rollback_performed": result.rollback_performed,
        "processing_time_seconds": result.processing_time.map_or(0.0, seconds),
        "targets": targets.iter().map(|t| json!({
            "domain": t.target.as_ref().map(|t| t.domain_name.clone()),
            "state": t.state().as_str_name().trim_start_matches("TARGET_STATE_"),
            "detail": t.detail,
            "error": t.error.as_ref().map(|s| s.message.clone()),
            "compensation_error": t.compensation_error.as_ref().map(|s| s.message.clone()),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_files_skip_blanks_and_comments() {
        assert_eq!(domains_in("a.example\n\n# note\n  b.example  \n"), vec!["a.example", "b.example"]);
    }

    #[test]
    fn an_empty_job_prints_a_zero_rate() {
        let job = pb::Job {
            state: pb::JobState::Succeeded.into(),
            result: Some(pb::BulkOperationResult::default()),
            ..Default::default()
        };
        let table = summary_table(&job, &[]);
        assert!(table.contains("state      SUCCEEDED"), "{table}");
        assert!(table.contains("success rate 0.0 %"), "{table}");
    }
}
