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

use crate::services::{self, SERVICES, ServiceSpec};
use crate::{EXIT_USAGE, GatewayArgs, ServeArgs, UpArgs};

/// Settings every server command needs, validated before any port is bound.
struct Bootstrap {
    source: ConfigSource,
    server_settings: ServerSettings,
    shutdown: CancellationToken,
    _telemetry: TelemetryGuard,
}

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mesh: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn bootstrap(service_name: &str, source: ConfigSource) -> Result<Bootstrap, ExitCode> {
    let telemetry_config = TelemetryConfig::from_source(service_name, &source).map_err(usage_error)?;
    let server_settings: ServerSettings = mesh_kit::config::load(&source).map_err(usage_error)?;
    let telemetry = telemetry::init(&telemetry_config).map_err(usage_error)?;
    let shutdown = CancellationToken::new();
    mesh_kit::shutdown::cancel_on_signal(shutdown.clone());
    Ok(Bootstrap { source, server_settings, shutdown, _telemetry: telemetry })
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

/// A service of `mesh up` with its bound listener.
struct BoundService {
    spec: &'static ServiceSpec,
    listener: TcpListener,
    url: String,
}

/// The Virtualmin simulator `mesh up` starts when no real server is configured.
struct SimulatorPlan {
    listener: TcpListener,
    config: mesh_virtualmin_sim::SimulatorConfig,
}

/// `mesh up`: every service and the gateway, each its own tonic server on
/// its own port, in one process.
pub(crate) async fn up(args: UpArgs) -> ExitCode {
    let process_source = ConfigSource::from_process();
    let bound = match bind_services(&args).await {
        Ok(bound) => bound,
        Err(error) => return exit_code(Err(error)),
    };
    let (source, simulator) = match plan_virtualmin_simulator(wire_up(process_source, &bound), &args).await {
        Ok(planned) => planned,
        Err(error) => return exit_code(Err(error)),
    };
    for service in &bound {
        if let Err(error) = (service.spec.check)(&source) {
            return usage_error(error);
        }
    }
    if let Err(error) = mesh_kit::config::load::<GatewayConfig>(&source) {
        return usage_error(error);
    }
    let boot = match bootstrap("mesh", source) {
        Ok(boot) => boot,
        Err(code) => return code,
    };
    exit_code(up_servers(args, bound, simulator, boot).await)
}

/// Without a configured Virtualmin server, starts the simulator on a free
/// port and points the `VirtualminGateway` at it with a fresh password.
async fn plan_virtualmin_simulator(
    source: ConfigSource,
    args: &UpArgs,
) -> anyhow::Result<(ConfigSource, Option<SimulatorPlan>)> {
    if source.var("VIRTUALMIN_SERVERS").is_some() {
        return Ok((source, None));
    }
    let listener = bind("the virtualmin simulator", SocketAddr::new(args.services_host, 0)).await?;
    let port = listener.local_addr()?.port();
    let password = uuid::Uuid::now_v7().simple().to_string();
    let servers = format!(
        "[{{id=simulator,hostname={},port={port},scheme=http,username=root,password_env=MESH_VIRTUALMIN_SIM_PASSWORD}}]",
        args.services_host
    );
    let source =
        source.with_var("VIRTUALMIN_SERVERS", servers).with_var("MESH_VIRTUALMIN_SIM_PASSWORD", password.clone());
    let config = mesh_virtualmin_sim::SimulatorConfig { password, ..Default::default() };
    Ok((source, Some(SimulatorPlan { listener, config })))
}

async fn bind_services(args: &UpArgs) -> anyhow::Result<Vec<BoundService>> {
    let mut bound = Vec::with_capacity(SERVICES.len());
    for spec in SERVICES {
        let port = if args.services_base_port == 0 { 0 } else { args.services_base_port + spec.port_offset };
        let listener = bind(spec.label, SocketAddr::new(args.services_host, port)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        bound.push(BoundService { spec, listener, url });
    }
    Ok(bound)
}

/// The settings that tie the services of `mesh up` together: the gateway
/// routes to each, and services that call others are pointed at them. What
/// the caller set explicitly is kept, except the gateway routes: `mesh up`
/// always routes to its own services.
fn wire_up(source: ConfigSource, bound: &[BoundService]) -> ConfigSource {
    let url_of = |name| bound.iter().find(|b| b.spec.name == name).map(|b| b.url.clone());
    let mut source = source;
    for service in bound {
        source = source.with_var(service.spec.gateway_upstream_var, service.url.clone());
    }
    if source.var("MESH_MEMORY_TARGETS").is_none() {
        let targets: Vec<String> = bound.iter().map(|b| format!("{}={}", b.spec.label, b.url)).collect();
        source = source.with_var("MESH_MEMORY_TARGETS", targets.join(","));
    }
    if source.var("MESH_VPNUSERS_CACHE_ENDPOINT").is_none()
        && let Some(cache_url) = url_of(services::ServiceName::Cache)
    {
        source = source.with_var("MESH_VPNUSERS_CACHE_ENDPOINT", cache_url);
    }
    if source.var("MESH_BULKOPS_VIRTUALMIN_ENDPOINT").is_none()
        && let Some(virtualmin_url) = url_of(services::ServiceName::Virtualmin)
    {
        source = source.with_var("MESH_BULKOPS_VIRTUALMIN_ENDPOINT", virtualmin_url);
    }
    source
}

async fn up_servers(
    args: UpArgs,
    bound: Vec<BoundService>,
    simulator: Option<SimulatorPlan>,
    boot: Bootstrap,
) -> anyhow::Result<()> {
    let gateway_listener = bind("the gateway", args.gateway_listen).await?;
    let gateway_addr = gateway_listener.local_addr()?;

    let mut servers = JoinSet::new();
    let simulator_url = match simulator {
        Some(SimulatorPlan { listener, config }) => {
            let url = format!("http://{}", listener.local_addr()?);
            let shutdown = boot.shutdown.clone();
            servers.spawn(async move {
                mesh_virtualmin_sim::serve(listener, config, shutdown).await.context("virtualmin simulator")
            });
            Some(url)
        }
        None => None,
    };
    let mut endpoints = Vec::with_capacity(bound.len());
    for service in bound {
        endpoints.push((service.spec.label, service.url));
        let runtime = Runtime {
            listener: service.listener,
            server_settings: boot.server_settings.clone(),
            config_source: boot.source.clone(),
            shutdown: boot.shutdown.clone(),
        };
        let label = service.spec.label;
        let serving = (service.spec.run)(runtime);
        servers.spawn(async move { serving.await.with_context(|| format!("{label} service")) });
    }
    let gateway = gateway_runtime(gateway_listener, args.gateway_admin_listen, &boot).await?;
    servers.spawn(async move { mesh_gateway::run(gateway).await.context("gateway") });

    println!("mesh is up; Ctrl-C stops it");
    println!("  gateway    http://{gateway_addr}");
    for (label, url) in &endpoints {
        println!("  {label:<10} {url}");
    }
    if let Some(url) = simulator_url {
        println!("  no Virtualmin server configured (VIRTUALMIN_SERVERS): using the simulator at {url}");
    }
    println!("try: grpcurl -plaintext {gateway_addr} list");
    wait_for_all(servers, &boot.shutdown).await
}

/// The gateway's runtime: its listener, the optional `/metrics` port, and
/// its settings kept current from the config file and SIGHUP.
async fn gateway_runtime(
    listener: TcpListener,
    admin_listen: Option<SocketAddr>,
    boot: &Bootstrap,
) -> anyhow::Result<mesh_gateway::GatewayRuntime> {
    let admin_listener = match admin_listen {
        Some(addr) => Some(bind("the gateway's admin port", addr).await?),
        None => None,
    };
    if let Some(admin) = &admin_listener {
        println!("  metrics    http://{}/metrics", admin.local_addr()?);
    }
    let config = mesh_kit::config::load_and_watch::<GatewayConfig>(
        boot.source.clone(),
        CONFIG_POLL_INTERVAL,
        boot.shutdown.clone(),
    )?;
    Ok(mesh_gateway::GatewayRuntime { listener, admin_listener, config, shutdown: boot.shutdown.clone() })
}

/// How often the config file is checked for changes.
const CONFIG_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

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
    let spec = services::spec(args.service);
    let source = ConfigSource::from_process();
    if let Err(error) = (spec.check)(&source) {
        return usage_error(error);
    }
    let boot = match bootstrap(&format!("mesh-{}", spec.label), source) {
        Ok(boot) => boot,
        Err(code) => return code,
    };
    exit_code(
        async {
            let listener = bind(spec.label, args.listen).await?;
            println!("{}  http://{}", spec.label, listener.local_addr()?);
            let runtime = Runtime {
                listener,
                server_settings: boot.server_settings.clone(),
                config_source: boot.source.clone(),
                shutdown: boot.shutdown.clone(),
            };
            (spec.run)(runtime).await.with_context(|| format!("{} service", spec.label))
        }
        .await,
    )
}

/// `mesh gateway`.
pub(crate) async fn gateway(args: GatewayArgs) -> ExitCode {
    let source = ConfigSource::from_process();
    if let Err(error) = mesh_kit::config::load::<GatewayConfig>(&source) {
        return usage_error(error);
    }
    let boot = match bootstrap("mesh-gateway", source) {
        Ok(boot) => boot,
        Err(code) => return code,
    };
    exit_code(
        async {
            let listener = bind("the gateway", args.listen).await?;
            println!("gateway  http://{}", listener.local_addr()?);
            let gateway = gateway_runtime(listener, args.admin_listen, &boot).await?;
            mesh_gateway::run(gateway).await?;
            Ok(())
        }
        .await,
    )
}

/// `mesh virtualmin-sim`: the Virtualmin simulator alone, for trying the
/// `VirtualminGateway` against a known data set.
pub(crate) async fn virtualmin_simulator(args: crate::SimulatorArgs) -> ExitCode {
    let boot = match bootstrap("mesh-virtualmin-sim", ConfigSource::from_process()) {
        Ok(boot) => boot,
        Err(code) => return code,
    };
    exit_code(
        async {
            let listener = bind("the virtualmin simulator", args.listen).await?;
            println!("virtualmin-sim  http://{}  (user root)", listener.local_addr()?);
            let config = mesh_virtualmin_sim::SimulatorConfig {
                password: args.password,
                domain_count: args.domains,
                ..Default::default()
            };
            mesh_virtualmin_sim::serve(listener, config, boot.shutdown.clone()).await?;
            Ok(())
        }
        .await,
    )
}
