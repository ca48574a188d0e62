#!/usr/bin/env python3
"""Turns the raw output of one section of bench/run into its JSON result.

    bench/collect.py <section> <raw dir> <out json> <repetitions>
    bench/collect.py machine <out json> key=value...

Each section's raw directory holds what its tools printed, one file per
repetition, `commands.txt` (the exact commands, one a line) and a
`failed-<name>` file per participant that could not run (its content is the
reason). This script only extracts one sample per repetition; medians, ratios
and verdicts are computed by mesh-bench-report (bench/report), so the rules
live in one place. A figure that cannot be read from its file is left out,
and a participant with no sample at all is reported as failed.
"""
import json
import os
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "gateway"))
from summarize import one_run  # noqa: E402  (the edge's h2load parser, shared)


def read(path):
    try:
        return pathlib.Path(path).read_text()
    except OSError:
        return ""


def failures(raw):
    return {p.name[len("failed-"):]: p.read_text().strip() or "no reason recorded" for p in sorted(raw.glob("failed-*"))}


def commands(raw):
    """The recorded commands, with paths relative to the checkout so they read the same on any clone."""
    repo = str(pathlib.Path(__file__).resolve().parent.parent) + "/"
    return [line.replace(repo, "") for line in read(raw / "commands.txt").splitlines() if line.strip()]


def measured(name, label, samples):
    return {"name": name, "label": label, "samples": [s for s in samples if s is not None]}


def row(measure, unit, better, subject, peer=None, target=None):
    out = {"measure": measure, "unit": unit, "better": better, "subject": subject}
    if peer is not None:
        out["peer"] = peer
    if target is not None:
        out["target"] = {"kind": target[0], "value": target[1]}
    return out


def percentile_points(durations):
    """(percentile, latency) points of a sorted list, p0 to p99.9."""
    if not durations:
        return []
    marks = list(range(0, 100, 2)) + [99, 99.5, 99.9]
    return [(m, durations[min(len(durations) - 1, int(len(durations) * m / 100))]) for m in marks]


def h2load_durations(log_paths):
    durations = []
    for path in log_paths:
        for line in read(path).splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and fields[2].strip().isdigit():
                durations.append(int(fields[2]))
    return sorted(durations)


def h2load_runs(raw, prefix):
    """Per repetition (rps, p50 µs, p99 µs) of the h2load runs named `<prefix>-r<rep>`.

    A run whose calls carried no message (a gRPC error is HTTP 200 without data) is no sample.
    """
    runs = []
    for out_path in sorted(raw.glob(f"{prefix}-r*.out")):
        try:
            rps, p50, p99, bytes_per_call = one_run(out_path, out_path.with_suffix(".log"))
        except (AttributeError, IndexError, ValueError, OSError):
            continue
        if bytes_per_call >= 5:
            runs.append((rps, p50, p99))
    return runs


def column(runs, index):
    return [run[index] for run in runs]


# --- sections ----------------------------------------------------------------


def edge(raw, reps):
    labels = {
        "direct": "direct to `mesh serve cache`",
        "gateway": "mesh gateway (default stack)",
        "gateway-auth": "mesh gateway, token + rate limit",
        "nginx": "nginx `grpc_pass`",
        "envoy": "Envoy",
    }
    runs = {(t, c): h2load_runs(raw, f"{t}-c{c}") for t in labels for c in (1, 64)}
    m = lambda t, c, i: measured(t, labels[t], column(runs[(t, c)], i))
    rows, plots = [], []
    for c in (1, 64):
        rows += [
            row(f"rps, {c} in flight", "req/s", "higher", m("gateway", c, 0), m("direct", c, 0), ("ratio_at_least", 0.5)),
            row(f"rps, {c} in flight", "req/s", "higher", m("gateway", c, 0), m("nginx", c, 0), ("ratio_at_least", 1.2)),
            row(f"rps, {c} in flight", "req/s", "higher", m("gateway", c, 0), m("envoy", c, 0), ("ratio_at_least", 1.0)),
            row(f"rps, {c} in flight", "req/s", "higher", m("gateway-auth", c, 0), m("gateway", c, 0)),
            row(f"rps, {c} in flight", "req/s", "higher", m("nginx", c, 0), m("direct", c, 0)),
            row(f"rps, {c} in flight", "req/s", "higher", m("envoy", c, 0), m("direct", c, 0)),
            row(f"p50, {c} in flight", "µs", "lower", m("gateway", c, 1), m("direct", c, 1),
                ("added_at_most", 100) if c == 1 else None),
            row(f"p50, {c} in flight", "µs", "lower", m("gateway", c, 1), m("nginx", c, 1)),
            row(f"p50, {c} in flight", "µs", "lower", m("gateway", c, 1), m("envoy", c, 1)),
            row(f"p99, {c} in flight", "µs", "lower", m("gateway", c, 2), m("nginx", c, 2)),
            row(f"p99, {c} in flight", "µs", "lower", m("gateway", c, 2), m("envoy", c, 2)),
        ]
        lines = []
        for t, label in labels.items():
            points = percentile_points(h2load_durations(sorted(raw.glob(f"{t}-c{c}-r*.log"))))
            if points and runs[(t, c)]:
                lines.append({"label": label.replace("`", ""), "points": points})
        if lines:
            plots.append({
                "file": f"edge-latency-c{c}",
                "title": f"Unary Get latency by percentile, {c} in flight (all repetitions pooled)",
                "x_label": "percentile",
                "y_label": "latency (µs)",
                "lines": lines,
            })
    return {
        "section": "edge",
        "title": "Edge: direct vs mesh gateway vs nginx vs Envoy",
        "about": (
            "Unary `mesh.cache.v1.Cache/Get` of a 32-byte value, loaded by h2load pinned to core 0; the one "
            "`mesh serve cache` and the proxy under test share core 1 (taskset), the same for every path. "
            "Runs are interleaved over the paths within each repetition, after 1 s of warm-up. 1 in flight "
            "is `h2load -c 1 -m 1`; 64 is `-c 16 -m 4`. Before the runs each path must answer `grpc-status: 0` "
            "with the value. Targets: the gateway keeps ≥ 0.5× direct throughput, ≥ 1.2× nginx, ≥ 1.0× Envoy, "
            "and adds ≤ 100 µs p50 at one call in flight."
        ),
        "repetitions": reps,
        "rows": rows,
        "plots": plots,
    }


def redis_csv(path):
    """(rps, p50 µs, p99 µs) of redis-benchmark --csv, or None."""
    lines = [l for l in read(path).splitlines() if l.strip()]
    if len(lines) < 2:
        return None
    header = [h.strip('"') for h in lines[0].split('","')]
    values = [v.strip('"') for v in lines[-1].split('","')]
    record = dict(zip(header, values))
    try:
        return float(record["rps"]), float(record["p50_latency_ms"]) * 1000, float(record["p99_latency_ms"]) * 1000
    except (KeyError, ValueError):
        return None


def cache(raw, reps):
    ops = {
        "get": ("Get of one key", "GET"),
        "set": ("Set of one key (32-byte value)", "SET"),
        "getmany": ("GetMany of 100 keys", "MGET of 100 keys"),
    }
    rows = []
    for c in (1, 64):
        for op, (label, redis_label) in ops.items():
            mesh_runs = h2load_runs(raw, f"mesh-{op}-c{c}")
            redis_runs = [r for r in (redis_csv(p) for p in sorted(raw.glob(f"redis-{op}-c{c}-r*.csv"))) if r]
            for index, (metric, unit, better) in enumerate(
                [("rps", "req/s", "higher"), ("p50", "µs", "lower"), ("p99", "µs", "lower")]
            ):
                rows.append(row(
                    f"{label}: {metric}, {c} in flight",
                    unit,
                    better,
                    measured("mesh", "mesh Cache through the gateway", column(mesh_runs, index)),
                    measured("redis", f"redis-server ({redis_label})", column(redis_runs, index)),
                ))
    return {
        "section": "cache",
        "title": "Cache: mesh vs redis-server",
        "about": (
            "The same operations at the same concurrency, no pipelining: the mesh's `Cache/Get`, `Cache/Set` and "
            "`Cache/GetMany` (100 keys) through `mesh gateway` to `mesh serve cache` (both on core 1), loaded by "
            "h2load on core 0 with one stream per connection (`-c N -m 1`); against `redis-server` on core 1 "
            "(loopback TCP, no persistence) loaded by `redis-benchmark -P 1 -c N` on core 0 (`GET`, `SET` with "
            "32-byte values, `MGET` of 100 keys). The mesh call crosses two HTTP/2 hops and protobuf, redis one "
            "RESP hop: the ratio is the price of the gateway and gRPC, not of the store. No target is set."
        ),
        "repetitions": reps,
        "rows": rows,
    }


def criterion_estimate(path, statistic="median"):
    """Point estimate in ns from criterion's estimates.json, or None."""
    try:
        return json.loads(read(path))[statistic]["point_estimate"]
    except (ValueError, KeyError, TypeError):
        return None


def ms(ns):
    return None if ns is None else ns / 1e6


def virtualmin(raw, reps):
    typed = [ms(criterion_estimate(raw / f"r{r}" / "typed_domains.json")) for r in range(1, reps + 1)]
    value = [ms(criterion_estimate(raw / f"r{r}" / "serde_json_value.json")) for r in range(1, reps + 1)]
    end_to_end = []
    for path in sorted(raw.glob("e2e-r*.out")):
        found = re.search(r"median of \d+ runs: (\d+) ms", read(path))
        if found:
            end_to_end.append(float(found.group(1)))
    return {
        "section": "virtualmin",
        "title": "Virtualmin parsing: typed vs serde_json::Value",
        "about": (
            "A 10,000-domain `list-domains --multiline` reply (minified JSON, rendered by the simulator, about "
            "15 MiB) parsed into typed `Domain` values (`wire::parse_domain_list`) against "
            "`serde_json::from_slice::<Value>` of the same bytes, in the same criterion run (median time). Target: "
            "typed ≤ 1.0× the `Value` time. End to end: ListDomains of all 10,000 domains through `mesh up`'s "
            "gateway from `mesh virtualmin-sim` (`bench/virtualmin/run`, median of its listings)."
        ),
        "repetitions": reps,
        "rows": [
            row("parse 10,000 domains", "ms", "lower", measured("typed", "typed `Vec<Domain>`", typed),
                measured("value", "`serde_json::Value`", value), ("ratio_at_most", 1.0)),
            row("ListDomains of 10,000 through the gateway", "ms", "lower",
                measured("virtualmin-e2e", "mesh up + simulator", end_to_end)),
        ],
    }


DURATION = re.compile(r"([\d.]+)(ns|µs|us|ms|s)\b")


def duration_ms(text):
    found = DURATION.match(text.strip())
    if not found:
        return None
    scale = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}[found.group(2)]
    return float(found.group(1)) * scale


def vpnusers(raw, reps, users):
    rows = []
    per_rep = [read(raw / f"r{r}.out") for r in range(1, reps + 1)]

    def fill_rate(backend):
        out = []
        for text in per_rep:
            found = re.search(rf"vpnusers/{backend}/batch_create: \d+ users (?:from \d+ caller\(s\) )?in [\d.]+ s = (\d+) users/s", text)
            out.append(float(found.group(1)) if found else None)
        return out

    def percentile(backend, name, which):
        out = []
        for text in per_rep:
            found = re.search(rf"vpnusers/{backend}/\d+/{name}: p50 (\S+), p99 (\S+), max (\S+)", text)
            out.append(duration_ms(found.group({"p50": 1, "p99": 2}[which]).rstrip(",")) if found else None)
        return out

    def mean(backend, name):
        return [ms(criterion_estimate(raw / f"r{r}" / backend / f"{name}.json", "mean")) for r in range(1, reps + 1)]

    labels = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    targets = {"sqlite": 50_000, "postgres": 20_000}
    for backend in ("sqlite", "postgres"):
        peer = (lambda samples: measured("sqlite", "SQLite", samples)) if backend == "postgres" else (lambda _: None)
        subject = lambda samples: measured(backend, labels[backend], samples)
        rows += [
            row(f"batch create, 100 per tx, 0 → {users:,}", "users/s", "higher", subject(fill_rate(backend)),
                peer(fill_rate("sqlite")), ("at_least", targets[backend])),
            row("SetStatus of 1000 ids (bulk status): p50", "ms", "lower",
                subject(percentile(backend, "set_status_1000_ids", "p50")),
                peer(percentile("sqlite", "set_status_1000_ids", "p50")), ("at_most", 10)),
            row("ListUsers filtered, page 1: p99", "ms", "lower",
                subject(percentile(backend, "list_filtered_page_1", "p99")),
                peer(percentile("sqlite", "list_filtered_page_1", "p99")), ("at_most", 5)),
            row("ListUsers username wildcard: p99", "ms", "lower",
                subject(percentile(backend, "list_username_wildcard", "p99")),
                peer(percentile("sqlite", "list_username_wildcard", "p99")), ("at_most", 5)),
            row("SearchUsers, one selective word: p99", "ms", "lower",
                subject(percentile(backend, "search_selective", "p99")),
                peer(percentile("sqlite", "search_selective", "p99")), ("at_most", 5)),
            row("SearchUsers, three words: p99", "ms", "lower",
                subject(percentile(backend, "search_two_words", "p99")),
                peer(percentile("sqlite", "search_two_words", "p99")), ("at_most", 5)),
            row("GetStats: mean", "ms", "lower", subject(mean(backend, "stats")), peer(mean("sqlite", "stats"))),
            row("GetUsers of 100 ids: mean", "ms", "lower", subject(mean(backend, "get_users_100")),
                peer(mean("sqlite", "get_users_100"))),
        ]
    return {
        "section": "vpnusers",
        "title": "VpnUsers on SQLite and PostgreSQL",
        "about": (
            f"The storage layer (`UserDirectory` over `UserStore`, no gRPC, no cache; "
            f"`services/vpnusers/benches/users.rs`): {users:,} users created in batches of 100, one transaction each, "
            "then at that size p50/p99 from plain loops (1,000 runs, 200 for SetStatus) and criterion means. SQLite "
            "is a WAL file on the local disk; PostgreSQL is Debian's package on the same machine, untuned, with the "
            "service's default `synchronous_commit = off`. PostgreSQL rows carry SQLite as the peer. Targets from "
            "the VpnUsers issue: batch create ≥ 50k (SQLite) / ≥ 20k (PostgreSQL) users/s, SetStatus of 1000 ids "
            "≤ 10 ms, reads p99 ≤ 5 ms."
        ),
        "repetitions": reps,
        "rows": rows,
    }


def docker(raw, reps):
    per_rep = [read(raw / f"r{r}.out") for r in range(1, reps + 1)]

    def figure(pattern):
        out = []
        for text in per_rep:
            found = re.search(pattern + r"\s+([\d.]+) ms", text)
            out.append(float(found.group(1)) if found else None)
        return out

    # The bench prints three blocks; each label is unique within its block.
    def in_block(heading, label):
        out = []
        for text in per_rep:
            block = text.split(heading, 1)[1] if heading in text else ""
            found = re.search(re.escape(label) + r"\s+([\d.]+) ms", block)
            out.append(float(found.group(1)) if found else None)
        return out

    start, off, live = "start 10 containers", "feeds off", "live feeds"
    # The bench prints its round count in its headings: "(median of N)".
    round_counts = sorted({int(n) for text in per_rep for n in re.findall(r"\(median of (\d+)\)", text)})
    rounds = " or ".join(str(n) for n in round_counts) + " round(s)" if round_counts else "its rounds"
    sequential = lambda samples: measured("sequential", "sequential calls", samples)
    rows = [
        row("start 10 containers", "ms", "lower",
            measured("batched", "1 batched call, max_concurrent 10", in_block(start, "batched, 1 call, max_concurrent 10")),
            sequential(in_block(start, "sequential, 10 calls")), ("at_most", 1000)),
        row("start 10 containers", "ms", "lower",
            measured("batched", "1 batched call, max_concurrent 5", in_block(start, "batched, 1 call, max_concurrent 5")),
            sequential(in_block(start, "sequential, 10 calls"))),
    ] + [
        # The same batched start on containers created with another network mode, against the bridge row:
        # what the engine's network set-up costs (docs/benchmarks-notes.md, DockerOps). No target of its own.
        row(f"start 10 containers, network {mode}", "ms", "lower",
            measured("batched", f"1 batched call, max_concurrent 10, network {mode}",
                     in_block(start, f"batched, 1 call, max_concurrent 10, network {mode}")),
            measured("batched", "the same on the default bridge network",
                     in_block(start, "batched, 1 call, max_concurrent 10")))
        for mode in ("none", "host")
    ] + [
        row("stats of 20, feeds off, no CPU %", "ms", "lower",
            measured("batched", "1 batched call, max_concurrent 10",
                     in_block(off, "batched, 1 call, max_concurrent 10, cpu window 0 ms")),
            sequential(in_block(off, "sequential, 20 calls, cpu window 0 ms"))),
        row("stats of 20, feeds off, CPU % over 0.2 s", "ms", "lower",
            measured("batched", "1 batched call, max_concurrent 10",
                     in_block(off, "batched, 1 call, max_concurrent 10, cpu window 200 ms")),
            sequential(in_block(off, "sequential, 20 calls, cpu window 200 ms"))),
        row("stats of 20, live feeds, later calls, no CPU %", "ms", "lower",
            measured("batched", "1 batched call, max_concurrent 10",
                     in_block(live, "later calls, max_concurrent 10, cpu window 0 ms")),
            sequential(in_block(off, "sequential, 20 calls, cpu window 0 ms")), ("at_most", 500)),
        row("stats of 20, live feeds, later calls, CPU %", "ms", "lower",
            measured("batched", "1 batched call, max_concurrent 10",
                     in_block(live, "later calls, max_concurrent 10, cpu window 200 ms")),
            sequential(in_block(off, "sequential, 20 calls, cpu window 200 ms")), ("at_most", 500)),
    ]
    return {
        "section": "docker",
        "title": "DockerOps: sequential vs batched on the real engine",
        "about": (
            "A DockerOps server on loopback and the generated client against this machine's engine "
            f"(`services/docker/benches/batch_vs_sequential.rs`, median of {rounds} per figure, "
            "`MESH_BENCH_DOCKER_ROUNDS`). Sequential is one "
            "call per container, each awaited before the next; batched is one call for all of them. Live-feed rows "
            "compare with sequential one-shot sampling. The default bridge network is what the start target is about; "
            "the `network none` and `network host` rows start containers created with that `network_mode`, to show "
            "the engine's network set-up cost. Targets from the DockerOps issue: start 10 ≤ 1 s; stats of "
            "20 ≤ 0.5 s."
        ),
        "repetitions": reps,
        "rows": rows,
    }


def bulkops(raw, reps):
    def domains_per_second(size):
        out = []
        for r in range(1, reps + 1):
            ns = criterion_estimate(raw / f"r{r}" / f"{size}_domains_concurrency_16.json")
            out.append(None if ns is None else size / (ns / 1e9))
        return out

    def seconds(size):
        return [ms(criterion_estimate(raw / f"r{r}" / f"{size}_domains_concurrency_16.json")) for r in range(1, reps + 1)]

    return {
        "section": "bulkops",
        "title": "BulkOps: suspend against the simulator",
        "about": (
            "BulkOps (embedded SQLite) → VirtualminGateway over gRPC → the simulator with 5 ms of latency on every "
            "call, BEST_EFFORT at `max_concurrency` 16, from StartBulkOperation to the last WatchJob message "
            "(`services/bulkops/benches/suspend.rs`, criterion median). Targets: ≥ 500 domains/s for 1000 domains; "
            "< 1 s for 100."
        ),
        "repetitions": reps,
        "rows": [
            row("suspend 1000 domains", "domains/s", "higher", measured("bulkops", "BulkOps job", domains_per_second(1000)),
                target=("at_least", 500)),
            row("suspend 100 domains", "ms", "lower", measured("bulkops", "BulkOps job", seconds(100)),
                target=("at_most", 1000)),
        ],
    }


def memory(raw, reps):
    calls_per_batch = 64

    def calls_per_second(case):
        out = []
        for r in range(1, reps + 1):
            ns = criterion_estimate(raw / f"r{r}" / f"{case}.json")
            out.append(None if not ns else calls_per_batch / (ns / 1e9))
        return out

    before, watched, after = (calls_per_second(case) for case in ("unwatched", "snapshots_every_1s", "unwatched_again"))
    # The unwatched cases run just before and just after the watched one: their mean cancels a steady drift of
    # the shared machine over the run, which the first or the second alone would count as (or hide) a loss.
    bracketing = [None if first is None or second is None else (first + second) / 2 for first, second in zip(before, after)]
    snapshots = []
    for r in range(1, reps + 1):
        found = re.search(r"snapshots while watched: (\d+)", read(raw / f"r{r}.out"))
        snapshots.append(float(found.group(1)) if found else None)
    throughput = "throughput, 64 concurrent Health/Check calls"
    watched_side = lambda: measured("watched", "snapshots every 1 s", watched)
    return {
        "section": "memory",
        "title": "MemoryProfiler: snapshot overhead",
        "about": (
            "A busy service (a `MeshServer` with one registered gauge, jemalloc as the allocator) answers batches of 64 "
            "concurrent unary calls (`grpc.health.v1.Health/Check`, through the whole kit stack) over one HTTP/2 "
            "connection, all in one process (`services/memory/benches/snapshot_overhead.rs`, criterion median time "
            "of a batch, as calls/s; not pinned: client, service and profiler share the cores). The same run measures "
            "it unwatched, then while a MemoryProfiler snapshots it every second (`MESH_MEMORY_SNAPSHOT_INTERVAL=1`: "
            "`GetMemoryStats` reads `/proc/self/statm`, `/proc/self/smaps_rollup`, the cgroup limit and jemalloc's "
            "stats after an epoch advance; the watched case starts once the first snapshot is taken), then unwatched "
            "again. The loss is judged against the mean of the two unwatched cases, which cancels a steady drift of "
            "the machine; the drift row shows how far the two unwatched cases differ, and a drift larger than 2 % "
            "makes the verdict noise. Target from the MemoryProfiler issue: < 2 % loss, i.e. watched ≥ 0.98× "
            "unwatched."
        ),
        "repetitions": reps,
        "rows": [
            row(throughput, "calls/s", "higher", watched_side(),
                measured("unwatched", "unwatched (mean of before and after)", bracketing), ("ratio_at_least", 0.98)),
            row(throughput, "calls/s", "higher", watched_side(), measured("unwatched", "unwatched, before", before)),
            row(throughput, "calls/s", "higher", watched_side(), measured("unwatched", "unwatched, after", after)),
            row(f"{throughput}: drift", "calls/s", "higher", measured("unwatched", "unwatched, after", after),
                measured("unwatched", "unwatched, before", before)),
            row("snapshots of the busy service while watched", "snapshots", "higher",
                measured("watched", "MemoryProfiler", snapshots)),
        ],
    }


def footprint(raw, reps):
    values = {}
    for r in range(1, reps + 1):
        for line in read(raw / f"r{r}.txt").splitlines():
            fields = line.split()
            if len(fields) == 3:
                values.setdefault((fields[0], fields[1]), []).append(float(fields[2]))
    get = lambda kind, name, scale=1.0: [v * scale for v in values.get((kind, name), [])]
    mib = 1 / 1024
    rss = lambda name, label: measured(name, label, get("rss_kib", name, mib))
    rows = [
        row("idle RSS", "MiB", "lower", rss("cache", "`mesh serve cache`"), rss("redis", "redis-server")),
        row("idle RSS", "MiB", "lower", rss("gateway", "`mesh gateway`"), rss("nginx", "nginx (master + worker)")),
        row("idle RSS", "MiB", "lower", rss("gateway", "`mesh gateway`"), rss("envoy", "Envoy")),
    ]
    for service in ("vpnusers", "virtualmin", "docker", "memory", "bulkops"):
        rows.append(row("idle RSS", "MiB", "lower", rss(service, f"`mesh serve {service}`")))
    rows += [
        row("idle RSS", "MiB", "lower", rss("mesh-up", "`mesh up` (gateway + every service + simulator)")),
        row("`mesh up` start to SERVING through the gateway", "ms", "lower",
            measured("mesh-up", "`mesh up`", get("ready_ms", "mesh-up"))),
        row("binary size", "MiB", "lower", measured("binary", "`target/release/mesh`", get("bytes", "binary", mib * mib))),
    ]
    return {
        "section": "footprint",
        "title": "Footprint",
        "about": (
            "Resident memory (`VmRSS`) of each server 3 s after it answers, with no load, each process alone and "
            "pinned to core 1; peers are measured the same way in the same run. `mesh up` time is from spawn to the "
            "first `grpc.health.v1` SERVING answer through its gateway (`mesh health`, polled every 20 ms). Binary "
            "size is the release `mesh` (line tables only). No target is set."
        ),
        "repetitions": reps,
        "rows": rows,
    }


def soak(raw, reps):
    data = {}
    try:
        data = json.loads(read(raw / "samples.json"))
    except ValueError:
        pass
    samples = data.get("samples", [])
    rows, plots = [], []
    seconds = data.get("seconds", 0)
    warm = seconds * data.get("warm_up_fraction", 0.25)
    judged = [s for s in samples if s["t"] >= warm]
    growth = slope_per_min = fd_growth = None
    if len(judged) >= 2:
        n = len(judged)
        mx = sum(s["t"] for s in judged) / n
        my = sum(s["rss_kib"] for s in judged) / n
        var = sum((s["t"] - mx) ** 2 for s in judged)
        slope = sum((s["t"] - mx) * (s["rss_kib"] - my) for s in judged) / var if var else 0.0
        growth = slope * (judged[-1]["t"] - judged[0]["t"]) / 1024
        slope_per_min = slope * 60 / 1024
        fd_growth = max(s["fds"] for s in judged) - min(s["fds"] for s in judged)
    # As the soak judges it (mesh/benches/soak.rs): the slope only over a judged window of 5 minutes or more.
    slope_judged = len(judged) >= 2 and judged[-1]["t"] - judged[0]["t"] >= 300
    one = lambda value: [value] if value is not None else []
    if data:
        rows = [
            row("unexpected errors", "errors", "lower", measured("soak", "mesh up", one(data.get("unexpected_errors"))),
                target=("at_most", 0)),
            row("fitted RSS growth after warm-up", "MiB", "lower", measured("soak", "mesh up", one(growth)),
                target=("at_most", 16)),
            row("RSS slope after warm-up", "MiB/min", "lower", measured("soak", "mesh up", one(slope_per_min)),
                target=("at_most", 1) if slope_judged else None),
            row("open descriptors gained after warm-up", "descriptors", "lower",
                measured("soak", "mesh up", one(fd_growth)), target=("at_most", 64)),
            row("peak RSS", "MiB", "lower",
                measured("soak", "mesh up", one(max((s["rss_kib"] for s in samples), default=None) and
                                               max(s["rss_kib"] for s in samples) / 1024))),
            row("maximum rate (closed loop, 16 callers)", "ops/s", "higher",
                measured("soak", "mesh up", one(data.get("max_rate")))),
            row("held rate", "ops/s", "higher",
                measured("soak", "mesh up", one(data["operations"] / seconds if seconds else None))),
            row("calls through the gateway", "calls", "higher", measured("soak", "mesh up", one(data.get("calls")))),
        ]
        plots = [
            {
                "file": "soak-rss",
                "title": "Soak: RSS of mesh up over time",
                "x_label": "seconds",
                "y_label": "RSS (MiB)",
                "lines": [{"label": "VmRSS", "points": [(s["t"], s["rss_kib"] / 1024) for s in samples]}],
            },
            {
                "file": "soak-errors",
                "title": "Soak: unexpected errors and open descriptors over time",
                "x_label": "seconds",
                "y_label": "count",
                "lines": [
                    {"label": "unexpected errors (cumulative)", "points": [(s["t"], s["errors"]) for s in samples]},
                    {"label": "open descriptors", "points": [(s["t"], s["fds"]) for s in samples]},
                ],
            },
        ]
    else:
        rows = [row("unexpected errors", "errors", "lower", measured("soak", "mesh up", []), target=("at_most", 0))]
    fraction = read(raw / "fraction.txt").strip() or "?"
    first_errors = data.get("first_errors") or []
    about = (
        f"`mesh up` (release) as a child process; a mixed workload over every service through the gateway (Cache "
        f"Set+Get and InvalidatePattern, VpnUsers create/get/delete and list/search, VirtualminGateway against the "
        f"built-in simulator, MemoryProfiler GetReport, DockerOps Health). The maximum rate is measured first (closed "
        f"loop, 16 callers, 5 s), then {fraction} of it is held in an open loop for {seconds} s, bounded in time. RSS "
        f"and open descriptors are sampled every second; after the first 25 % a least-squares line is fitted to the "
        f"RSS. One run: the soak is its own repetition over time. Targets: no unexpected error, fitted growth ≤ 16 MiB, a slope ≤ 1 MiB/min "
        f"when at least 5 minutes are judged, descriptors gained ≤ 64."
    )
    if first_errors:
        about += "\n\nFirst errors: " + "; ".join(f"`{e}`" for e in first_errors[:5])
    return {"section": "soak", "title": "Soak", "about": about, "repetitions": 1, "rows": rows, "plots": plots}


def main():
    if sys.argv[1] == "machine":
        out = pathlib.Path(sys.argv[2])
        values = dict(arg.split("=", 1) for arg in sys.argv[3:])
        versions = {k[len("version."):]: v for k, v in values.items() if k.startswith("version.")}
        machine = {k: v for k, v in values.items() if not k.startswith("version.") and k != "scale"}
        machine["quick"] = machine.get("quick") == "1"
        machine["repetitions"] = int(machine.get("repetitions", "1"))
        machine["cores"] = int(machine.get("cores", "0"))
        machine["scale"] = [s for s in values.get("scale", "").split(";") if s.strip()]
        machine["versions"] = versions
        out.write_text(json.dumps(machine, indent=1))
        return
    section, raw, out, reps = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), int(sys.argv[4])
    builders = {
        "edge": edge, "cache": cache, "virtualmin": virtualmin, "docker": docker, "bulkops": bulkops,
        "memory": memory, "footprint": footprint, "soak": soak,
        "vpnusers": lambda raw, reps: vpnusers(raw, reps, int(read(raw / "users.txt").strip() or 0)),
    }
    result = builders[section](raw, reps)
    result["measured"] = os.environ.get("BENCH_MEASURED", "")
    result["commands"] = commands(raw)
    result["failures"] = failures(raw)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
