//! `mesh health`: one `grpc.health.v1.Health/Check` against a server, for
//! container healthchecks (compose, `docker run --health-cmd`), which run
//! the image's own binary because the image holds nothing else. Exit 0 when
//! the answer is `SERVING`; otherwise exit 1 with the reason on stderr
//! (1 is the code Docker reads as "unhealthy"), and 64 for a bad endpoint.

use std::process::ExitCode;
use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::EXIT_USAGE;

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// The server to ask, `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// The service to ask about, e.g. `mesh.cache.v1.Cache`; empty means the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// How long connecting and the call may take together, e.g. `2s`, `500ms`.
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    timeout: Duration,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| error.to_string())
}

/// Why a health check did not answer `SERVING`.
#[derive(Debug, thiserror::Error)]
enum Unhealthy {
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The error with its sources: tonic's own message is only "transport error".
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the check failed: {:?}: {}", .0.code(), .0.message())]
    Call(tonic::Status),
    #[error("the server answers {0}")]
    NotServing(&'static str),
}

pub(crate) async fn run(args: HealthArgs) -> ExitCode {
    let endpoint = match Endpoint::from_shared(args.endpoint.clone()) {
        Ok(endpoint) => endpoint.connect_timeout(args.timeout).timeout(args.timeout),
        Err(error) => {
            eprintln!("mesh health: --endpoint `{}` is not a URL: {error}", args.endpoint);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // One deadline over connect and call, so a black-holed address cannot
    // outlast the healthcheck's own timeout.
    let outcome = tokio::time::timeout(args.timeout, check(endpoint, args.service.clone()))
        .await
        .unwrap_or(Err(Unhealthy::TimedOut(args.timeout)));
    let subject = if args.service.is_empty() { "the server".to_owned() } else { format!("`{}`", args.service) };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("mesh health: {subject} at {} is not serving: {reason}", args.endpoint);
            ExitCode::FAILURE
        }
    }
}

async fn check(endpoint: Endpoint, service: String) -> Result<(), Unhealthy> {
    let channel = endpoint.connect().await.map_err(|error| Unhealthy::Connect(error_chain(&error)))?;
    let response = HealthClient::new(channel).check(HealthCheckRequest { service }).await.map_err(Unhealthy::Call)?;
    match ServingStatus::try_from(response.into_inner().status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(status) => Err(Unhealthy::NotServing(status.as_str_name())),
        Err(_) => Err(Unhealthy::NotServing("an unknown status")),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_unhealthy_with_the_reason() {
        // Bind then drop, so the port is known to refuse.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        let error = check(endpoint, String::new()).await.unwrap_err();
        assert!(matches!(&error, Unhealthy::Connect(reason) if reason.contains("refused")), "{error}");
    }
}
