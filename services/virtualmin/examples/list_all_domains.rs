//! Lists every domain of one Virtualmin server through a `VirtualminGateway`
//! endpoint, page by page, and prints how long each full listing took: the
//! end-to-end figure of docs/benchmarks.md, run by `bench/virtualmin/run`
//! against `mesh up`'s gateway.
//!
//! Usage: `list_all_domains ENDPOINT SERVER_ID PAGE_SIZE RUNS EXPECTED_DOMAINS`
//! (e.g. `http://127.0.0.1:50051 sim 1000 5 10000`). Each run starts a fresh
//! listing, so every run makes Virtualmin list and the service parse again.

use std::time::{Duration, Instant};

use mesh_proto::virtualmin::v1 as pb;
use mesh_proto::virtualmin::v1::virtualmin_gateway_client::VirtualminGatewayClient;

/// Largest response accepted: a whole 10,000-domain page is about 6 MiB.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

fn argument<T: std::str::FromStr>(arguments: &[String], index: usize, name: &str) -> T {
    arguments
        .get(index)
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("argument {index} ({name}) is missing or malformed; see the module docs"))
}

#[tokio::main]
async fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let endpoint: String = argument(&arguments, 1, "ENDPOINT");
    let server_id: String = argument(&arguments, 2, "SERVER_ID");
    let page_size: i32 = argument(&arguments, 3, "PAGE_SIZE");
    let runs: usize = argument(&arguments, 4, "RUNS");
    let expected_domains: usize = argument(&arguments, 5, "EXPECTED_DOMAINS");
    let mut client = VirtualminGatewayClient::connect(endpoint)
        .await
        .expect("connect to the endpoint")
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut totals = Vec::with_capacity(runs);
    for run in 1..=runs {
        let started = Instant::now();
        let mut first_page = Duration::ZERO;
        let mut pages = 0;
        let mut domains = 0;
        let mut page_token = String::new();
        loop {
            let request = pb::ListDomainsRequest {
                server_id: server_id.clone(),
                page_size,
                page_token: page_token.clone(),
                ..Default::default()
            };
            let page = client.list_domains(request).await.expect("ListDomains").into_inner();
            pages += 1;
            if pages == 1 {
                first_page = started.elapsed();
            }
            domains += page.domains.len();
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let total = started.elapsed();
        assert_eq!(domains, expected_domains, "every domain was listed once");
        println!(
            "run {run}: {domains} domains in {pages} pages; first page {} ms, all pages {} ms",
            first_page.as_millis(),
            total.as_millis()
        );
        totals.push(total);
    }
    totals.sort();
    if let Some(median) = totals.get(totals.len() / 2) {
        println!("median of {runs} runs: {} ms", median.as_millis());
    }
}
