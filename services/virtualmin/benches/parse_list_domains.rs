//! Parsing a 10,000-domain `list-domains --multiline` reply (minified JSON, as
//! the gateway requests it, rendered by the simulator): the typed parse into
//! `Domain`s against a `serde_json::Value` parse of the same bytes, in the
//! same run. The typed parse borrows strings and skips unread keys.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mesh_virtualmin::wire::parse_domain_list;
use mesh_virtualmin_sim::{Simulator, SimulatorConfig};

fn list_domains_reply(domain_count: usize) -> Vec<u8> {
    let simulator = Simulator::new(SimulatorConfig { domain_count, ..SimulatorConfig::default() });
    simulator.render("program=list-domains&json=minified&multiline=").into_bytes()
}

fn parse_10k(c: &mut Criterion) {
    let body = list_domains_reply(10_000);
    assert_eq!(parse_domain_list(&body).expect("the reply parses").len(), 10_000);
    let mut group = c.benchmark_group("list_domains_10k");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.sample_size(20);
    group.bench_function("typed_domains", |b| b.iter(|| parse_domain_list(black_box(&body)).expect("parses")));
    group.bench_function("serde_json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).expect("parses"));
    });
    group.finish();
}

criterion_group!(benches, parse_10k);
criterion_main!(benches);
