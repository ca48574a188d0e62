//! remote.cgi replies as they come off the wire: framing by status and
//! content type, the JSON envelope, the typed listings and the text outputs.
//! None may panic, and a failure text never carries the request's secret.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_virtualmin::Program;
use mesh_virtualmin::wire::{
    backup_final_size, check_framing, decode, parse_bandwidth, parse_domain_list, parse_plan_list, parse_server_info,
};
use serde::de::IgnoredAny;

/// Stands for the password a request carried, which Virtualmin may echo.
const SECRET: &str = "fuzz-secret-pw";

fuzz_target!(|body: &[u8]| {
    let content_type = match body.first().map(|byte| byte % 4) {
        Some(0) => "application/json; charset=utf-8",
        Some(1) => "text/plain",
        Some(2) => "text/html",
        _ => "application/octet-stream",
    };
    let _ = check_framing("fuzz", Program::CreateDomain, 200, content_type, body);
    let _ = parse_domain_list(body);
    let _ = parse_plan_list(body);
    let _ = parse_bandwidth(body);
    if let Err(error) = decode::<IgnoredAny>(Program::CreateDomain, body, &[SECRET]) {
        let text = error.to_string();
        assert!(!text.contains(SECRET), "a failure leaked the secret: {text}");
    }
    let text = String::from_utf8_lossy(body);
    let _ = parse_server_info(&text);
    let _ = backup_final_size(&text);
});
