//! The headers every server reads from callers: `grpc-timeout` and the
//! correlation id. Parsing never panics; a parsed timeout formats back to a
//! value that parses to at least as long; an accepted id is 1..=128 visible
//! ASCII characters.

#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mesh_kit::CorrelationId;
use mesh_kit::correlation::{CORRELATION_ID_HEADER, REQUEST_ID_HEADER, format_grpc_timeout, parse_grpc_timeout};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(timeout) = parse_grpc_timeout(text) {
            let formatted = format_grpc_timeout(timeout);
            let reparsed = parse_grpc_timeout(&formatted).expect("a formatted timeout parses");
            assert!(reparsed >= timeout, "{text:?} -> {timeout:?} -> {formatted} -> {reparsed:?}");
        }
        if let Some(id) = CorrelationId::parse(text) {
            assert!((1..=128).contains(&id.as_str().len()) && id.as_str().bytes().all(|b| b.is_ascii_graphic()));
        }
    }
    // Header values as they arrive: arbitrary bytes, split over both names.
    let (first, second) = data.split_at(data.len() / 2);
    let mut headers = HeaderMap::new();
    for (name, value) in [(CORRELATION_ID_HEADER, first), (REQUEST_ID_HEADER, second)] {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    if let Some(id) = CorrelationId::from_headers(&headers) {
        assert!(data.windows(id.as_str().len()).any(|window| window == id.as_str().as_bytes()));
    }
});
