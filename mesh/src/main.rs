//! `mesh`: the one binary of the mesh. `mesh up` runs the gateway and every
//! service on embedded defaults; `mesh serve <service>` and `mesh gateway`
//! run one piece each (as compose and Kubernetes do); `mesh cache ...`
//! calls the Cache service through the gateway.
//!
//! # Layout
//! - `run`: the server commands (`up`, `serve`, `gateway`).
//! - `cache_cli`: the `mesh cache` client verbs and their output.

mod cache_cli;
mod run;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit status for invalid configuration or usage (sysexits `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "mesh", version, about = "A gRPC mesh for Virtualmin fleets, VPN users and Docker hosts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gateway and every service in this process, on embedded defaults.
    Up(UpArgs),
    /// Runs one service, as a container would.
    Serve(ServeArgs),
    /// Runs the edge gateway alone; upstreams come from `MESH_GATEWAY_*_UPSTREAM`.
    Gateway(GatewayArgs),
    /// Calls the Cache service through the gateway.
    Cache(cache_cli::CacheArgs),
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Address of the gateway, the one endpoint callers use (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    gateway_listen: SocketAddr,
    /// Address of the Cache service.
    #[arg(long, default_value = "127.0.0.1:50061")]
    cache_listen: SocketAddr,
}

/// The services `mesh serve` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServiceName {
    /// `mesh.cache.v1.Cache`.
    Cache,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The service to run.
    service: ServiceName,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:50061")]
    listen: SocketAddr,
}

#[derive(Debug, clap::Args)]
struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mesh: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => run::up(args).await,
            Command::Serve(args) => run::serve(args).await,
            Command::Gateway(args) => run::gateway(args).await,
            Command::Cache(args) => cache_cli::run(args).await,
        }
    })
}
