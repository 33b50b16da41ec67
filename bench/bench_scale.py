"""Control-plane scale (issue #14): many simulated ADS clients on one control plane, and the
control plane's start with a large mesh.

    .venv/bin/python bench/bench_scale.py            # both setups (≈ 15 min on 2 cores)
    .venv/bin/python bench/bench_scale.py --quick    # 1 change per client setup
    .venv/bin/python bench/bench_scale.py --json     # one JSON object on stdout

1. **Clients**: `meshwarden server` and N simulated state-of-the-world ADS clients (the
   `bench_propagation` clients: one mTLS channel and SVID each, every response ACKed, messages
   read and written at the wire level) for N = 1,000 (the baseline, same run) and 10,000.
   Per N: server CPU to connect them all and per mesh-wide change, server RSS per connected
   client, and change → every client ACKed p50 / p99.
2. **Start**: `meshwarden server` started on 1,000 workloads and 10,000 AuthorizationPolicies
   (its CA made by an earlier start, as after a restart), then 1,000 clients connect as soon as
   it is ready; the clock stops when every one has ACKed its Listeners. Baseline, same run: the
   same start with the 100 per-app policies only.

The clients share the machine's two cores with the server: their CPU is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_propagation as bp

POLICIES_PER_FILE = 500  # a file holds at most 1,000 documents (the input limits)
START_WORKLOADS = 1000
DESCRIPTORS_PER_CLIENT = 1  # in the server (grpc terminates TLS) and in this process alike


def raise_descriptor_limit(wanted: int) -> int:
    """Raise this process's descriptor limit (the server inherits it) towards `wanted`, never
    lowering it, as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for ceiling in (max(wanted, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(wanted, ceiling)), ceiling))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_client_counts(counts: list[int], rounds: int, work: Path) -> list[dict[str, Any]]:
    rows = []
    for n, clients in enumerate(counts):
        bp.log(f"setup: {clients:,} simulated ADS clients on one control plane")
        row = bp.run_clients(
            clients, rounds, f"127.{70 + n}.0", work / f"clients-{clients}", references=False
        )
        row["label"] = f"{clients:,} simulated clients"
        rows.append(row)
    return rows


def extra_policy(n: int, shape: bp.MeshShape) -> str:
    """One more ALLOW policy on app `n % apps`, in its namespace (selectors are namespaced)."""
    apps = shape.apps
    return (
        "---\napiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: extra-{n}, namespace: {shape.namespace(n % apps)}}}\n"
        f"spec:\n  selector: {{matchLabels: {{app: app{n % apps}}}}}\n"
        f"  rules:\n  - from: [{{namespaces: [src{n % 50}]}}]\n"
        f"    to: [{{methods: [GET], paths: [/extra-{n}/*]}}]\n"
    )


def write_start_mesh(directory: Path, workloads: int, policies: int) -> None:
    shape = bp.MeshShape(workloads, "127.80.0", tuple(20_000 + i for i in range(workloads)))
    bp.write_mesh(directory, shape)
    extra = max(0, policies - shape.apps)  # write_mesh wrote one policy per app
    for first in range(0, extra, POLICIES_PER_FILE):
        chunk = range(first, min(first + POLICIES_PER_FILE, extra))
        text = "".join(extra_policy(n, shape) for n in chunk)
        (directory / f"extra-{first // POLICIES_PER_FILE:03d}.yaml").write_text(text)


def server(work: Path, ads: str) -> bp.Child:
    args = ["--policies", str(work / "policies"), "--data-dir", str(work / "data")]
    listen = ["--listen", "127.0.0.1:0", "--xds-listen", ads]
    return bp.Child(bp.meshwarden("server", *args, *listen), work / "server.log")


def run_start(workloads: int, policies: int, work: Path) -> dict[str, Any]:
    """Spawn → ready → every client ACKed, on a data dir an earlier start made."""
    write_start_mesh(work / "policies", workloads, policies)
    port = bp.free_ports(1)[0]
    first = server(work, f"127.0.0.1:{port}")
    try:
        first.wait_ready(timeout=600)
    finally:
        first.stop()
    identities = bp.mint_identities(work / "policies", work / "data")
    timed = server(work, f"127.0.0.1:{port}")
    try:
        start = time.perf_counter()
        timed.wait_ready(timeout=600)
        ready_s = time.perf_counter() - start
        cpu = timed.cpu_seconds()
        acked_s = asyncio.run(_connect_all(f"127.0.0.1:{port}", identities)) - start
        row = {
            "workloads": workloads,
            "policies": policies,
            "ready_s": ready_s,
            "ready_cpu_s": cpu,
            "all_acked_s": acked_s,
            "server_cpu_s": timed.cpu_seconds(),
            "rss_kib": timed.rss_kib(),
        }
        bp.log(
            f"start with {workloads:,} workloads, {policies:,} policies: ready {ready_s:.1f} s, "
            f"all ACKed {acked_s:.1f} s"
        )
        return row
    finally:
        timed.stop()


async def _connect_all(target: str, identities: bp.Identities) -> float:
    propagation = bp.Propagation(len(identities.credentials))
    tasks = []
    for node, creds in sorted(identities.credentials.items()):
        client = bp.AdsClient(node, target, creds, propagation)
        tasks.append(asyncio.create_task(client.run()))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)  # the same ramp as bench_propagation
    try:
        await bp._wait_or_fail(propagation.connected, tasks, 600, "all clients ACKed")
        return time.perf_counter()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}; "
        f"load average {m['loadavg_start']:.1f} at start, {result['loadavg_end']:.1f} at end; "
        f"descriptor limit {result['descriptor_limit']}"
    )
    rows = result["clients"]
    for row in rows:
        c, r = row["connect_cpu_s"], row["rounds_cpu_s"]
        print(
            f"{row['label']}: connected and ACKed in {row['connect_s']:.1f} s (server CPU "
            f"{c['server']:.1f} s, clients {c['clients']:.1f} s); server RSS "
            f"{row['rss_kib_before'] / 1024:.0f} → {row['rss_kib_after'] / 1024:.0f} MiB = "
            f"{row['rss_kib_per_client']:.0f} KiB per client; change → all ACKed p50 / p99 "
            f"{bp.ms(row['total']['p50'])} / {bp.ms(row['total']['p99'])} ms; server CPU per "
            f"change {r['server'] / row['rounds']:.2f} s"
        )
    if len(rows) > 1:
        base, big = rows[0], rows[-1]

        def per_change(row: dict[str, Any]) -> float:
            return float(row["rounds_cpu_s"]["server"]) / int(row["rounds"])

        print(
            f"  ratios {big['clients']:,} vs {base['clients']:,} clients (same run): p99 "
            f"{big['total']['p99'] / base['total']['p99']:.1f}×, server CPU per change "
            f"{per_change(big) / per_change(base):.1f}×, memory per client "
            f"{big['rss_kib_per_client'] / base['rss_kib_per_client']:.2f}×"
        )
    starts = result["start"]
    for row in starts:
        print(
            f"start with {row['workloads']:,} workloads and {row['policies']:,} policies: ready "
            f"{row['ready_s']:.1f} s ({row['ready_cpu_s']:.1f} s CPU), every client ACKed "
            f"{row['all_acked_s']:.1f} s after spawn; RSS {row['rss_kib'] / 1024:.0f} MiB"
        )
    if len(starts) > 1:
        few, many = starts[0], starts[-1]
        ratio = many["all_acked_s"] / few["all_acked_s"]
        print(f"  ratio {many['policies']:,} vs {few['policies']:,} policies: {ratio:.1f}×")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one change per client setup")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--clients", default="1000,10000", help="client counts (1000,10000)")
    parser.add_argument("--rounds", type=int, help="changes per client setup (3; quick 1)")
    parser.add_argument("--start", default="100,10000", help="policy counts for the start setup")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = parser.parse_args()
    counts = [int(x) for x in args.clients.split(",") if x]
    limit = raise_descriptor_limit(DESCRIPTORS_PER_CLIENT * max([*counts, START_WORKLOADS]) + 1024)
    capacity = (limit - 1024) // DESCRIPTORS_PER_CLIENT
    if max(counts, default=0) > capacity:
        bp.log(
            f"the descriptor limit is {limit} (the hard limit here): one control plane holds "
            f"{DESCRIPTORS_PER_CLIENT} per client, so at most {capacity:,} clients are measured"
        )
        counts = sorted({min(c, capacity) for c in counts})
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    result: dict[str, Any] = {"machine": bp.machine(), "clients": [], "start": []}
    result["descriptor_limit"] = limit
    try:
        with bp.terminate_on_sigterm():
            rounds = args.rounds or (1 if args.quick else 3)
            result["clients"] = run_client_counts(counts, rounds, work)
            for policies in (int(x) for x in args.start.split(",") if x):
                row = run_start(START_WORKLOADS, policies, work / f"start-{policies}")
                result["start"].append(row)
    finally:
        if args.keep:
            bp.log(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
