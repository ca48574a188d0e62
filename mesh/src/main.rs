//! `mesh`: the one binary of the mesh. `mesh up` runs the gateway and every
//! service on embedded defaults; `mesh serve <service>` and `mesh gateway`
//! run one piece each (as compose and Kubernetes do); `mesh cache ...`
//! calls the Cache service through the gateway.
//!
//! # Layout
//! - `run`: the server commands (`up`, `serve`, `gateway`).
//! - `cache_cli`: the `mesh cache` client verbs and their output.
//! - `bulk_cli`: `mesh bulk`, a BulkOps job with a progress bar and a summary.
//! - `health_cli`: `mesh health`, the probe container healthchecks run.

mod bulk_cli;
mod cache_cli;
mod health_cli;
mod run;
mod services;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use services::ServiceName;

/// jemalloc, so every server can report allocator figures and heap profiles
/// (`mesh.memory.v1.MemoryIntrospection`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// SAFETY: jemalloc reads this NUL-terminated string once, at its first allocation, and nothing writes it.
// `prof:true` compiles heap sampling in; `prof_active:false` keeps it off until `MESH_SERVER_HEAP_PROFILING=true`.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"prof:true,prof_active:false,lg_prof_sample:19\0";

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
    /// Runs a bulk job (suspend, activate, backup, health) over domains through the gateway.
    Bulk(bulk_cli::BulkArgs),
    /// Runs the Virtualmin simulator (remote.cgi over HTTP with a seeded data set).
    VirtualminSim(SimulatorArgs),
    /// Checks a server's `grpc.health.v1` health: exit 0 when serving (for container healthchecks).
    Health(health_cli::HealthArgs),
}

#[derive(Debug, clap::Args)]
struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,
    /// Domains in the seeded data set.
    #[arg(long, default_value_t = 50)]
    domains: usize,
    /// The password of user `root`.
    #[arg(long, default_value = "simulator")]
    password: String,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Address of the gateway, the one endpoint callers use (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    gateway_listen: SocketAddr,
    /// Address of the gateway's admin port serving Prometheus `/metrics`; none by default.
    #[arg(long)]
    gateway_admin_listen: Option<SocketAddr>,
    /// Host the services listen on.
    #[arg(long, default_value = "127.0.0.1")]
    services_host: std::net::IpAddr,
    /// First service port: the cache listens on it, the others on the ports after it.
    /// 0 gives every service a free port of the system's choosing.
    #[arg(long, default_value_t = 50061)]
    services_base_port: u16,
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
    /// Address of the admin port serving Prometheus `/metrics`; none by default.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
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
            Command::Bulk(args) => bulk_cli::run(args).await,
            Command::VirtualminSim(args) => run::virtualmin_simulator(args).await,
            Command::Health(args) => health_cli::run(args).await,
        }
    })
}
