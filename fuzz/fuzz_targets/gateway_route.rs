//! The gateway's routing and deadline policy over arbitrary paths and
//! `grpc-timeout` values: a call reaches an upstream only by naming exactly
//! that service and one method, and no caller gets more time than the
//! gateway's maximum deadline.

#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use mesh_gateway::fuzzing::{Route, deadline_budget, route};

const UPSTREAMS: [&str; 5] = [
    "mesh.cache.v1.Cache",
    "mesh.vpnusers.v1.VpnUsers",
    "mesh.virtualmin.v1.VirtualminGateway",
    "mesh.docker.v1.DockerOps",
    "mesh.memory.v1.MemoryProfiler",
];

fuzz_target!(|data: &[u8]| {
    // The first line is the path, the rest the `grpc-timeout` value.
    let (path, timeout) = match data.iter().position(|byte| *byte == b'\n') {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(path) = std::str::from_utf8(path) else { return };
    match route(path, &UPSTREAMS) {
        Route::Upstream(service) => {
            let method = path.strip_prefix(&format!("/{service}/")).expect("routed by its own service name");
            assert!(!method.is_empty() && !method.contains('/'), "{path:?} routed with a malformed method");
            assert!(UPSTREAMS.contains(&service.as_str()));
        }
        Route::UnknownService(service) => assert!(!UPSTREAMS.contains(&service.as_str())),
        Route::Health | Route::ReflectionV1 | Route::ReflectionV1Alpha | Route::MalformedPath => {}
    }
    let timeout = timeout.and_then(|bytes| HeaderValue::from_bytes(bytes).ok());
    let (budget, max_deadline) = deadline_budget(path, timeout);
    assert!(budget <= max_deadline, "{path:?} got {budget:?}, more than {max_deadline:?}");
});
