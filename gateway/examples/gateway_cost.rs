//! The gateway's own cost per call, without the rest of the mesh: two roles
//! of one small binary, run as two processes so that a profiler
//! (`valgrind --tool=callgrind`, `perf stat`) sees only the gateway.
//!
//! - `gateway_cost upstream <addr>`: a bare HTTP/2 server answering every
//!   call with one 37-byte gRPC message and `grpc-status: 0`, as a cache hit
//!   of `mesh.cache.v1.Cache/Get` would; it costs the gateway what any
//!   upstream does, and builds without the services.
//! - `gateway_cost gateway <addr>`: `mesh_gateway::serve` with its full
//!   default stack, the settings read from `MESH_GATEWAY_*` and the logs set
//!   up by the kit as `mesh gateway` sets them up (`RUST_LOG`,
//!   `MESH_LOG_FORMAT`), until Ctrl-C or SIGTERM.
//!
//! `bench/gateway/callgrind` drives it with h2load and prints instructions per call.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use mesh_kit::telemetry::{self, TelemetryConfig};
use mesh_kit::{CancellationToken, ConfigSource};
use tokio::net::TcpListener;

/// The answer of every call: a gRPC frame (flag, length 32, then 32 bytes).
const ANSWER: &[u8] = b"\x00\x00\x00\x00\x20abcdefghijklmnopqrstuvwxyz012345";

fn main() {
    let mut arguments = std::env::args().skip(1);
    let (Some(role), Some(address)) = (arguments.next(), arguments.next()) else {
        eprintln!("usage: gateway_cost (upstream|gateway) <address>");
        std::process::exit(64);
    };
    let address: SocketAddr = address.parse().expect("an address such as 127.0.0.1:50351");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(address).await.expect("the address is free");
        match role.as_str() {
            "upstream" => upstream(listener).await,
            "gateway" => gateway(listener).await,
            other => panic!("unknown role {other}"),
        }
    });
}

async fn gateway(listener: TcpListener) {
    let source = ConfigSource::from_process();
    let telemetry_config = TelemetryConfig::from_source("mesh-gateway", &source).expect("valid log settings");
    let _telemetry = telemetry::init(&telemetry_config).expect("logs set up");
    let config: mesh_gateway::GatewayConfig = mesh_kit::config::load(&source).expect("valid gateway settings");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        stop.cancel();
    });
    mesh_gateway::serve(listener, config, shutdown).await.expect("the gateway serves");
}

async fn upstream(listener: TcpListener) {
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut connection) = h2::server::handshake(socket).await else { return };
            while let Some(Ok((request, respond))) = connection.accept().await {
                tokio::spawn(answer(request, respond));
            }
        });
    }
}

async fn answer(request: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let mut body = request.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let mut head = Response::new(());
    head.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    let Ok(mut stream) = respond.send_response(head, false) else { return };
    let _ = stream.send_data(Bytes::from_static(ANSWER), false);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = stream.send_trailers(trailers);
}
