#!/usr/bin/env python3
"""Reads the h2load runs of bench/gateway/run and prints the comparison.

Each run left `<target>-c<concurrency>-r<rep>.out` (h2load's report) and
`.log` (one line per request: start, status, duration in µs). For every
target and concurrency it takes the median over repetitions of rps, p50 and
p99, and prints a Markdown table with the ratios to direct, nginx and Envoy.
"""
import pathlib
import re
import statistics
import sys

targets = ["direct", "gateway", "gateway-auth", "nginx", "envoy"]
labels = {
    "direct": "(a) direct to `mesh serve cache`",
    "gateway": "(b) mesh gateway, full default stack",
    "gateway-auth": "(b') mesh gateway, token and rate limit configured",
    "nginx": "(c) nginx `grpc_pass`, upstream keepalive",
    "envoy": "(d) Envoy, `--concurrency 1`",
}


def one_run(out_path, log_path):
    report = out_path.read_text()
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", report).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", report)
    data_bytes = re.search(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?, .*?\((\d+)\) data", report)
    succeeded = int(done.group(2))
    # A gRPC error is HTTP 200 with no message: a run whose calls carry no data did not really succeed.
    bytes_per_call = int(data_bytes.group(3)) / max(succeeded, 1)
    durations = sorted(int(line.split("\t")[2]) for line in log_path.read_text().splitlines() if line.strip())
    p50 = durations[len(durations) // 2]
    p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
    return rps, p50, p99, bytes_per_call


def main():
    results = pathlib.Path(sys.argv[1])
    table = {}
    for target in targets:
        for concurrency in (1, 64):
            runs = []
            for out_path in sorted(results.glob(f"{target}-c{concurrency}-r*.out")):
                runs.append(one_run(out_path, out_path.with_suffix(".log")))
            if runs:
                table[(target, concurrency)] = tuple(statistics.median(column) for column in zip(*runs)) + (len(runs),)

    print("| path | in flight | rps | p50 µs | p99 µs | rps vs direct | rps vs nginx | rps vs Envoy | added p50 µs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for target in targets:
        for concurrency in (1, 64):
            if (target, concurrency) not in table:
                continue
            rps, p50, p99, bytes_per_call, _ = table[(target, concurrency)]
            direct = table.get(("direct", concurrency))
            nginx = table.get(("nginx", concurrency))
            envoy = table.get(("envoy", concurrency))
            ratio = lambda other: f"{rps / other[0]:.2f}" if other else "—"
            added = f"{p50 - direct[1]:+.0f}" if direct and target != "direct" else "—"
            print(
                f"| {labels[target]} | {concurrency} | {rps:,.0f} | {p50:.0f} | {p99:.0f} | {ratio(direct)} | "
                f"{ratio(nginx)} | {ratio(envoy)} | {added} |"
            )
            if bytes_per_call < 20:
                print(f"WARNING: {target} c{concurrency}: {bytes_per_call:.0f} data bytes per call; calls failed", file=sys.stderr)


if __name__ == "__main__":
    main()
