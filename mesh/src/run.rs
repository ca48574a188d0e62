//! The server commands. Each loads and validates every setting it needs
//! before binding a port (exit 64 on a bad setting), installs telemetry,
//! and stops every server together on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use mesh_gateway::GatewayConfig;
use mesh_kit::telemetry::{self, TelemetryConfig, TelemetryGuard};
use mesh_kit::{CancellationToken, ConfigSource, Runtime, ServerSettings};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::{EXIT_USAGE, GatewayArgs, ServeArgs, ServiceName, UpArgs};

/// Settings every server command needs, validated before any port is bound.
struct Bootstrap {
    source: ConfigSource,
    server_settings: ServerSettings,
    shutdown: CancellationToken,
    _telemetry: TelemetryGuard,
}

fn bootstrap(service_name: &str) -> Result<Bootstrap, ExitCode> {
    let source = ConfigSource::from_process();
    let usage_error = |message: String| {
        eprintln!("mesh: {message}");
        ExitCode::from(EXIT_USAGE)
    };
    let telemetry_config = TelemetryConfig::from_source(service_name, &source).map_err(usage_error)?;
    let server_settings: ServerSettings = mesh_kit::config::load(&source).map_err(|e| usage_error(e.to_string()))?;
    let telemetry = telemetry::init(&telemetry_config).map_err(usage_error)?;
    let shutdown = CancellationToken::new();
    mesh_kit::shutdown::cancel_on_signal(shutdown.clone());
    Ok(Bootstrap { source, server_settings, shutdown, _telemetry: telemetry })
}

fn check<T: mesh_kit::ServiceConfig>(source: &ConfigSource) -> Result<T, ExitCode> {
    mesh_kit::config::load(source).map_err(|error| {
        eprintln!("mesh: {error}");
        ExitCode::from(EXIT_USAGE)
    })
}

async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for {name} on {addr}"))
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "mesh stopped with an error");
            eprintln!("mesh: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `mesh up`: every service and the gateway, each its own tonic server on
/// its own port, in one process.
pub(crate) async fn up(args: UpArgs) -> ExitCode {
    let boot = match bootstrap("mesh") {
        Ok(boot) => boot,
        Err(code) => return code,
    };
    if let Err(code) = check::<mesh_cache::CacheConfig>(&boot.source) {
        return code;
    }
    exit_code(up_servers(args, boot).await)
}

async fn up_servers(args: UpArgs, boot: Bootstrap) -> anyhow::Result<()> {
    let cache_listener = bind("cache", args.cache_listen).await?;
    let gateway_listener = bind("the gateway", args.gateway_listen).await?;
    let cache_addr = cache_listener.local_addr()?;
    let gateway_addr = gateway_listener.local_addr()?;

    // `mesh up` always routes to its own services, whatever the environment says.
    let gateway_source = boot.source.clone().with_var("MESH_GATEWAY_CACHE_UPSTREAM", format!("http://{cache_addr}"));
    let gateway_config: GatewayConfig = mesh_kit::config::load(&gateway_source)?;

    let mut servers = JoinSet::new();
    let cache_runtime = Runtime {
        listener: cache_listener,
        server_settings: boot.server_settings.clone(),
        config_source: boot.source.clone(),
        shutdown: boot.shutdown.clone(),
    };
    servers.spawn(async move { mesh_cache::run(cache_runtime).await.context("cache service") });
    let gateway_shutdown = boot.shutdown.clone();
    servers.spawn(async move {
        mesh_gateway::serve(gateway_listener, gateway_config, gateway_shutdown).await.context("gateway")
    });

    println!("mesh is up; Ctrl-C stops it");
    println!("  gateway  http://{gateway_addr}");
    println!("  cache    http://{cache_addr}");
    println!("try: grpcurl -plaintext {gateway_addr} list");
    wait_for_all(servers, &boot.shutdown).await
}

/// Waits for every server; the first failure stops the others.
async fn wait_for_all(mut servers: JoinSet<anyhow::Result<()>>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut first_error = None;
    while let Some(joined) = servers.join_next().await {
        let result = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(error) = result {
            shutdown.cancel();
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `mesh serve <service>`.
pub(crate) async fn serve(args: ServeArgs) -> ExitCode {
    let service_name = match args.service {
        ServiceName::Cache => "mesh-cache",
    };
    let boot = match bootstrap(service_name) {
        Ok(boot) => boot,
        Err(code) => return code,
    };
    let result = async {
        match args.service {
            ServiceName::Cache => {
                if let Err(code) = check::<mesh_cache::CacheConfig>(&boot.source) {
                    return Ok(Some(code));
                }
                let listener = bind("cache", args.listen).await?;
                println!("cache  http://{}", listener.local_addr()?);
                let runtime = Runtime {
                    listener,
                    server_settings: boot.server_settings.clone(),
                    config_source: boot.source.clone(),
                    shutdown: boot.shutdown.clone(),
                };
                mesh_cache::run(runtime).await?;
            }
        }
        Ok(None)
    }
    .await;
    match result {
        Ok(Some(code)) => code,
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => exit_code(Err(error)),
    }
}

/// `mesh gateway`.
pub(crate) async fn gateway(args: GatewayArgs) -> ExitCode {
    let boot = match bootstrap("mesh-gateway") {
        Ok(boot) => boot,
        Err(code) => return code,
    };
    let config = match check::<GatewayConfig>(&boot.source) {
        Ok(config) => config,
        Err(code) => return code,
    };
    exit_code(
        async {
            let listener = bind("the gateway", args.listen).await?;
            println!("gateway  http://{}", listener.local_addr()?);
            mesh_gateway::serve(listener, config, boot.shutdown.clone()).await?;
            Ok(())
        }
        .await,
    )
}
