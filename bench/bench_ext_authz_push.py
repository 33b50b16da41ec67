"""ext_authz checks while policy changes are pushed (issue #14): does a check wait behind a push?

    .venv/bin/python bench/bench_ext_authz_push.py            # ≈ 4 min on 2 cores
    .venv/bin/python bench/bench_ext_authz_push.py --quick    # 300 clients, 2 changes
    .venv/bin/python bench/bench_ext_authz_push.py --json     # one JSON object on stdout

A real control plane (`meshwarden server`, its ext_authz HTTP front over mTLS) with N simulated
state-of-the-world ADS clients (bench_propagation's: one mTLS channel and SVID each, every
response ACKed), and a steady ext_authz load on the front (`_check_load`: keep-alive mTLS
connections with a workload's SVID, the request head Envoy's HTTP filter writes, a fixed rate,
latency from each request's scheduled time). First a quiet phase, then mesh-wide policy changes
one after the other (each pushed to every client and waited for until all ACKed). Each check is
classed by its scheduled time: **during a push** (from the write of a change to the last ACK)
or **quiet**; per class p50 / p99 and the checks over the sidecar's default `extAuthz.timeout`
(250 ms: each one a fail-closed 403 in production), and the checks whose connection failed
(closed under them: a fail-closed 403 through Envoy too). The load reopens a connection the
front closed, as Envoy's pool does.

The same run measures each mode asked for (`--modes`), one control plane after the other on
the same policies, clients and load: `http:N` is the HTTP front with `--ext-authz-workers N`
(0: on the control plane's event loop), `grpc:0` gRPC Check over the sidecars' ADS listener
(grpc.aio on the event loop: a sidecar bootstrapped without the front), `grpc:N` (N ≥ 1) gRPC
Check on the front's h2 side served by N workers (a sidecar bootstrapped with
`--ext-authz-port`). Unpinned: the server, its workers, the clients and the load share the
machine as they would on a 1–2 core host. Every answer must allow the checked request;
anything else stops the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_propagation as bp
from _check_load import CheckLoad, LoadPlan, Sample
from cryptography.hazmat.primitives.serialization import Encoding
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    CheckRequest,
)
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import CaConfig, SystemClock, generate_key, load_ca
from meshwarden.identities import private_key_pkcs8_pem as pkcs8
from meshwarden.xds._ext_authz_filter import CHECK_PATH

from meshwarden._policies import Policies

TIMEOUT_MS = 250.0  # Mesh extAuthz.timeout's default


def check_head(workload: str, caller: str) -> bytes:
    """The request head Envoy's HTTP ext_authz filter writes for GET /api/x (Envoy 1.40)."""
    fields = {
        "host": "app0.ns0:8080",
        "content-length": "0",
        "x-meshwarden-workload": workload,
        "x-meshwarden-port": "8080",
        "x-meshwarden-peer": "=" + caller,
        "x-meshwarden-source": "=127.0.0.1",
        "x-meshwarden-jwt": "=",
        "x-envoy-internal": "true",
        "x-envoy-expected-rq-timeout-ms": "250",
    }
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"GET {CHECK_PATH}/api/x HTTP/1.1\r\n{lines}\r\n".encode()


def check_request(caller: str) -> bytes:
    """The CheckRequest Envoy's gRPC ext_authz filter sends for GET /api/x from `caller`."""
    http = AttributeContextHttpRequest(
        method="GET", path="/api/x", host="app0.ns0:8080", headers={":path": "/api/x"}
    )
    source = AttributeContextPeer(
        principal=caller,
        address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=40000)),
    )
    request = AttributeContextRequest(http=http)
    return bytes(CheckRequest(attributes=AttributeContext(source=source, request=request)))


def target(policies: Path, data: Path) -> tuple[str, str, tuple[str, str, str]]:
    """(workload ref, an allowed caller's SPIFFE ID, the workload's SVID files and the trust
    bundle's): app0's first replica, called from ns9 (app0-callers allows ns9 GET /api/*)."""
    state = Policies(policies, settle=0)
    state.reload_when_settled()
    assert state.registry is not None
    workloads = state.registry.workloads
    ref = next(r for r, w in sorted(workloads.items()) if w.labels.get("app") == "app0")
    caller = next(str(w.identity) for w in workloads.values() if w.namespace == "ns9")
    ca = load_ca(data / "ca.json", CaConfig(TrustDomain(bp.TRUST_DOMAIN)), SystemClock())
    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(str(workloads[ref].identity)))
    chain, key_file = data.parent / "svid.pem", data.parent / "svid.key"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
    key_file.write_bytes(pkcs8(key))
    key_file.chmod(0o600)
    roots = data.parent / "roots.pem"
    roots.write_bytes(ca.bundle().x509_pem())
    return ref, caller, (str(chain), str(key_file), str(roots))


def start_server(work: Path, workers: int) -> tuple[bp.Child, dict[str, Any]]:
    args = ["server", str(work / "policies"), "--data-dir", str(work / "data")]
    args += ["--listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0"]
    args += ["--ext-authz-listen", "127.0.0.1:0", "--ext-authz-workers", str(workers)]
    server = bp.Child(bp.meshwarden(*args), work / f"server-{workers}.log")
    ready = server.wait_ready(timeout=300)
    ports = {
        "ads": re.search(r"ADS on (\S+?:\d+)", ready).group(1),  # type: ignore[union-attr]
        "front": int(re.search(r"ext_authz on \S+:(\d+)", ready).group(1)),  # type: ignore[union-attr]
        "health": int(re.search(r"health http://[^/]+:(\d+)/", ready).group(1)),  # type: ignore[union-attr]
    }
    return server, ports


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def worker_cpu(server: bp.Child, health: dict[str, Any]) -> float:
    """CPU seconds of the control plane's ext_authz workers so far: the ones that exited
    (retired at each change: the server's reaped children) and the serving ones."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = _stat(server.process.pid)
    total = (int(fields[13]) + int(fields[14])) / tick
    for worker in health.get("extAuthz", {}).get("workers", []):
        with contextlib.suppress(OSError):
            fields = _stat(worker["pid"])
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pin_this_process(cpus: set[int]) -> None:
    """Every thread of this process (the simulated sidecars) on `cpus`; processes started
    afterwards inherit it, so the server is started with every CPU."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


async def measure_mode(
    work: Path, index: int, mode: str, args: argparse.Namespace, identities: bp.Identities
) -> dict[str, Any]:
    everywhere = set(range(os.cpu_count() or 1))
    pin_this_process(everywhere)
    transport, workers = mode.split(":")
    server, ports = start_server(work, int(workers))
    if args.clients_cpu is not None:  # the sidecars stand for other hosts: keep them on one CPU
        pin_this_process({args.clients_cpu})
    try:
        plan = load_plan(transport, int(workers), ports, args)
        return await _with_server(server, ports, work, (index, mode), plan, args, identities)
    finally:
        server.stop()


def load_plan(
    transport: str, workers: int, ports: dict[str, Any], args: argparse.Namespace
) -> LoadPlan:
    """The check load of a mode: HTTP/1.1 to the front, or gRPC Check to the front's h2 side
    (workers) or to the ADS listener (grpc.aio on the event loop, `grpc:0`)."""
    ref, caller, (chain, key, roots) = args.target
    seconds = args.quiet + args.push_seconds
    if transport == "http":
        return LoadPlan(ports["front"], chain, key, check_head(ref, caller), args.rate, seconds)
    port = ports["front"] if workers else int(ports["ads"].rsplit(":", 1)[1])
    metadata = (("x-meshwarden-workload", ref), ("x-meshwarden-port", "8080"))
    return LoadPlan(
        port,
        chain,
        key,
        b"",
        args.rate,
        seconds,
        grpc=check_request(caller),
        roots=roots,
        metadata=metadata,
    )


async def _with_server(
    server: bp.Child,
    ports: dict[str, Any],
    work: Path,
    mode: tuple[int, str],
    plan: LoadPlan,
    args: argparse.Namespace,
    identities: bp.Identities,
) -> dict[str, Any]:
    index, name = mode
    propagation = bp.Propagation(len(identities.credentials))
    tasks = []
    for node, creds in sorted(identities.credentials.items()):
        client = bp.AdsClient(node, ports["ads"], creds, propagation)
        tasks.append(asyncio.create_task(client.run()))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)
    await bp._wait_or_fail(propagation.connected, tasks, 600, "all clients ACKed")
    bp.log(f"{name}: {len(tasks):,} clients ACKed; load {args.rate:,} checks/s")
    load = CheckLoad(plan)
    windows: list[tuple[float, float]] = []
    acked: list[float] = []
    try:
        await asyncio.sleep(args.quiet + 0.5)
        cpu = server.cpu_seconds(), worker_cpu(server, bp.get_health("127.0.0.1", ports["health"]))
        deadline = time.time() + args.push_seconds - 2
        k = 0
        while time.time() < deadline and k < args.changes:
            k += 1
            propagation.begin()
            began = time.time()
            bp.write_atomically(
                work / "policies" / "root-policy.yaml", bp.root_policy(k + 1000 * index)
            )
            await bp._wait_or_fail(propagation.done, tasks, 600, f"change {k} ACKed")
            windows.append((began, time.time()))
            acked.append(windows[-1][1] - began)
            bp.log(f"{name}: change {k} ACKed by every client after {acked[-1]:.2f} s")
            await asyncio.sleep(0.5)
        health = bp.get_health("127.0.0.1", ports["health"])
        cpu = server.cpu_seconds() - cpu[0], worker_cpu(server, health) - cpu[1]
        samples = await asyncio.to_thread(load.result)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return summarize(samples, windows, acked, cpu, health, args.quiet)


def _stats(samples: list[Sample]) -> dict[str, Any]:
    latencies = sorted(s[1] for s in samples)
    if not latencies:
        return {"checks": 0}
    return {
        "checks": len(latencies),
        "p50_ms": bp.percentile(latencies, 50),
        "p99_ms": bp.percentile(latencies, 99),
        "max_ms": latencies[-1],
        "over_timeout": sum(1 for x in latencies if x > TIMEOUT_MS),
        "failed": sum(1 for s in samples if s[2] == 0),  # the connection failed: a 403
    }


def summarize(
    samples: list[Sample],
    windows: list[tuple[float, float]],
    acked: list[float],
    cpu: tuple[float, float],
    health: dict[str, Any],
    quiet_s: float,
) -> dict[str, Any]:
    bad = [s for s in samples if s[2] not in (200, 0)]
    if bad:
        raise SystemExit(f"{len(bad)} of {len(samples)} checks not allowed: {bad[:5]}")
    first = samples[0][0] if samples else 0.0

    def pushing(t: float) -> bool:
        return any(a <= t <= b for a, b in windows)

    during = [s for s in samples if pushing(s[0])]
    slow_at = sorted(
        round(s[0] - max(a for a, _ in windows if a <= s[0]), 2)
        for s in during
        if s[1] > TIMEOUT_MS
    )
    quiet = [s for s in samples if not pushing(s[0]) and s[0] - first < quiet_s]
    return {
        "quiet": _stats(quiet),
        "during_push": _stats(during),
        "changes": len(windows),
        "change_acked_s": acked,
        "server_cpu_s_per_change": cpu[0] / max(1, len(windows)),
        "worker_cpu_s": cpu[1],
        "workers": health.get("extAuthz", {}).get("workers", []),
        "over_timeout_at_s": slow_at,  # when, after its change was written, each was scheduled
        # quiet checks over the timeout: when, after the load began, each was scheduled
        "quiet_over_timeout_at_s": [round(s[0] - first, 2) for s in quiet if s[1] > TIMEOUT_MS],
    }


def print_report(report: dict[str, Any]) -> None:
    m, a = report["machine"], report["settings"]
    print(f"machine : {m['cpu']}, {m['cores']} cores, load average {m['load_avg']:.2f} at start")
    print(
        f"setup   : {a['clients']:,} simulated ADS clients, {a['rate']:,} checks/s (mTLS: "
        f"keep-alive HTTP/1.1, or gRPC over 8 HTTP/2 connections), {a['quiet']} s quiet then up "
        f"to {a['changes']} mesh-wide changes, each waited for until every client ACKed"
    )
    print("modes   : http:N the HTTP front, N workers (0: on the event loop); grpc:0 gRPC Check")
    print(
        "          on the ADS listener (the event loop); grpc:N gRPC Check on the front, N workers"
    )
    print()
    print("mode     phase         checks  p50 ms   p99 ms   max ms  >250 ms  failed  CPU s/change")
    for mode, row in report["modes"].items():
        for phase in ("quiet", "during_push"):
            x = row[phase]
            cpu = f"{row['server_cpu_s_per_change']:.2f}" if phase == "during_push" else ""
            print(
                f"{mode:>7}  {phase:<12} {x['checks']:>7,} {x.get('p50_ms', 0):7.2f} "
                f"{x.get('p99_ms', 0):8.2f} {x.get('max_ms', 0):8.1f} {x.get('over_timeout', 0):8,}"
                f" {x.get('failed', 0):7,}  {cpu}"
            )
        acked = row["change_acked_s"]
        compiled = [w["lastCompileSeconds"] for w in row["workers"]]
        late = row["over_timeout_at_s"]
        print(
            f"         {row['changes']} changes ACKed by all after {min(acked):.2f}-"
            f"{max(acked):.2f} s; workers' CPU {row['worker_cpu_s']:.1f} s, last change "
            f"compiled in {compiled} s; checks over 250 ms were scheduled "
            + (f"{late[0]:.2f}-{late[-1]:.2f} s after the write" if late else "never")
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="300 clients, 2 changes, 5 s quiet")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--clients", type=int, help="simulated ADS clients (default 1,000)")
    p.add_argument("--rate", type=int, default=300, help="checks/s (default %(default)s)")
    p.add_argument("--changes", type=int, help="policy changes per mode (default 5)")
    p.add_argument("--quiet", type=int, help="seconds of load without pushes (default 10)")
    p.add_argument(
        "--modes",
        default="http:0,http:1,grpc:0,grpc:1",
        help="TRANSPORT:WORKERS, comma-separated (default %(default)s; see above)",
    )
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="leave the simulated sidecars unpinned too (default: on CPU 0 when there are 2+)",
    )
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    args.clients_cpu = None if args.no_pin or len(cpus) < 2 else cpus[0]
    args.clients = args.clients or (300 if args.quick else 1000)
    args.changes = args.changes or (2 if args.quick else 5)
    args.quiet = args.quiet or (5 if args.quick else 10)
    args.push_seconds = args.changes * (3 + args.clients / 250)
    args.modes = args.modes.split(",")
    for mode in args.modes:
        transport, _, workers = mode.partition(":")
        if transport not in ("http", "grpc") or not workers.isdigit():
            p.error(f"--modes: {mode!r} is not http:N or grpc:N")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_avg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-ext-authz-push-") as tmp:
        work = Path(tmp)
        shape = bp.MeshShape(
            args.clients, "127.91.0", tuple(20_000 + i for i in range(args.clients))
        )
        bp.write_mesh(work / "policies", shape)
        first, _ = start_server(work, 0)  # makes the CA the SVIDs come from
        first.stop()
        identities = bp.mint_identities(work / "policies", work / "data")
        args.target = target(work / "policies", work / "data")
        modes = {
            mode: asyncio.run(measure_mode(work, index, mode, args, identities))
            for index, mode in enumerate(args.modes)
        }
    report = {
        "machine": {"cpu": bp.cpu_model(), "cores": os.cpu_count(), "load_avg": load_avg},
        "settings": {
            k: getattr(args, k) for k in ("clients", "rate", "changes", "quiet", "clients_cpu")
        },
        "modes": modes,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
