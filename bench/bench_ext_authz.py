"""ext_authz enforcement versus native RBAC: request latency p50/p99 through the same server
sidecar set-up, same policies, same run (issue #5, Benchmark).

    .venv/bin/python bench/bench_ext_authz.py          # ~2 min
    .venv/bin/python bench/bench_ext_authz.py --quick  # ~40 s
    .venv/bin/python bench/bench_ext_authz.py --json   # one JSON object on stdout

Path of one request (bench_dataplane.py's set-up, through the shared bench/_harness.py):

    load → client sidecar (127.0.0.1:localPort, tcp_proxy → mTLS)
         → server sidecar (TLS + SPIFFE validator, HCM, [native: RBAC | ext_authz: gRPC Check
           to the engine], router) → backend Envoy (`direct_response`)

The engine is this process: `Authorization` (the control plane's service) on a plaintext
loopback gRPC port, deciding with the evaluator; in production it sits behind the control
plane's mTLS endpoint (one more TLS hop on an already open HTTP/2 connection). Policies:
bench_dataplane's N one-rule ALLOW policies (the client named by the last), both sidecars
compiled from the same documents, ext_authz only switching `Mesh.spec.enforcement`.

Six server sidecars in the same run: native RBAC; the ext_authz filter over gRPC Check (grpc.aio
in a process of its own, plaintext loopback, as the control plane's servicer on its event loop);
the same gRPC filter asking an `--ext-authz-workers` worker (`ext_authz_grpc_worker`: the front's
h2 side, mTLS with ALPN h2 as a sidecar bootstrapped with `--ext-authz-port` asks it); over
HTTP to our front (`extAuthz.transport: http`, mTLS, the engine in a process of its own as an
`--ext-authz-workers` worker is; and the worker itself); and the same HTTP filter asking **the
floor**
(bench/_authz_floor.py: an Envoy answering 200 with `direct_response` behind the same mTLS, no
Python), so the HTTP front's added p50 splits into Envoy's own ext_authz hop (floor − native)
and ours (front − floor).

Measured, in interleaved rounds (native, ext_authz, then reversed), on 2+ cores the server
sidecar and the engine pinned to one CPU, load generator, client sidecar and backend to the
other:
- at a fixed rate (default 1,000 req/s, the OPA-Envoy anchor's rate; `h2load --rps`, each
  request's latency from its log, so p99 is exact): end-to-end p50/p99 and their ratios;
- closed loop (`wrk`, fixed connections): p50/p99 and req/s at saturation;
- the engine's own share: time inside the Check handler (parse, decide, span, answer) per
  call, which is what OPA-Envoy's ≈0.2 ms median / 1.5 ms p99 "evaluation" figures measure.
Before measuring, both sidecars must deny an identity no rule names (403) and let the client
through (200). Then the engine alone (bench/_engine_alone.py): Checks straight over gRPC
(h2load, no Envoy), the production servicer against the same without its decision cache and
against a servicer answering a constant — grpc's own per-call cost, measured in the same run
(`--engine-only`: just that part, about a minute). Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as harness
from _authz_floor import FloorEngine
from _engine_alone import Engine, engine_alone, print_engine_alone, run_load
from _harness import PORT, SERVER, Config, Identities, Layout, Processes, progress
from _worker_engine import WorkerEngine
from meshwarden.xds import (
    CLUSTER,
    LISTENER,
    TranslationContext,
    loopback_cluster,
    workload_resources,
)
from meshwarden.xds._envoy import static_cluster, upstream_tls

AUTHZ_CLUSTER = "meshwarden-ext-authz"
OPA_ANCHOR = {"p50_ms": 0.2, "p99_ms": 1.5}  # OPA-Envoy evaluation at 1,000 req/s
FLOOR = "ext_authz_floor"  # the HTTP filter asking a native server that always allows
WORKER = "ext_authz_worker"  # the HTTP front as `server --ext-authz-workers 1` serves it
GRPC_WORKER = "ext_authz_grpc_worker"  # gRPC Check on the same worker's front (h2)
# gRPC Check (grpc.aio, and the worker), `extAuthz.transport: http` (our front, and the
# worker), and the same filter asking the floor
EXT_LABELS = ("ext_authz", GRPC_WORKER, "ext_authz_http", WORKER, FLOOR)


def ext_documents(
    n: int, address: str, backend_port: int, transport: str = "grpc"
) -> list[dict[str, Any]]:
    """bench_dataplane's documents with `enforcement: ext-authz` over `transport`."""
    docs = harness.mesh_documents(n, address, backend_port)
    docs[0]["spec"]["enforcement"] = "ext-authz"
    # The sidecar's 250 ms default would turn a scheduling stall of this shared machine (seen:
    # 300-400 ms, both transports) into a fail-closed 403 that stops the run at its oracle;
    # latency is measured, not bounded, so the timeout is 2 s for both.
    docs[0]["spec"]["extAuthz"] = {"transport": transport, "timeout": "2s"}
    return docs


def ext_authz_config(
    n: int, address: str, backend_port: int, ids: Identities, transport: str = "grpc"
) -> tuple[Config, list[dict[str, Any]]]:
    """The server sidecar in ext-authz mode (the cluster to the engine is added at start) and
    its documents: bench_dataplane's with `enforcement: ext-authz`."""
    docs = ext_documents(n, address, backend_port, transport)
    compiled = harness.load_mesh(docs)
    ctx = TranslationContext(
        static_tls=ids.server,
        inline_routes=True,
        ext_authz_cluster=AUTHZ_CLUSTER,
        ext_authz_http_cluster=AUTHZ_CLUSTER,
    )
    resources = workload_resources(compiled, SERVER, ctx)
    [listener] = [r for r in resources[LISTENER] if r["name"] == f"in:{PORT}"]
    [local] = resources[CLUSTER]
    label = "ext_authz" if transport == "grpc" else "ext_authz_http"
    return Config(label, n, address, listener, local), docs


def mtls_cluster(port: int, ids: Identities) -> dict[str, Any]:
    """The server sidecar's HTTP/1.1 cluster to the engine's front, over mTLS with its SVID
    (as in production: the front requires a client certificate from the bundle)."""
    tls = ids.server
    certificate = {
        "certificateChain": {"filename": tls.certificate_chain},
        "privateKey": {"filename": tls.private_key},
    }
    validation = {"trustedCa": {"filename": tls.trust_bundle}}
    common = {"tlsCertificates": [certificate], "validationContext": validation}
    return {
        **static_cluster(AUTHZ_CLUSTER, "127.0.0.1", port),
        "transportSocket": upstream_tls(commonTlsContext=common),
    }


def h2_mtls_cluster(port: int, ids: Identities) -> dict[str, Any]:
    """`mtls_cluster` over HTTP/2 with ALPN h2: the front's gRPC side, as the sidecar's
    bootstrap declares it."""
    cluster = mtls_cluster(port, ids)
    common = cluster["transportSocket"]["typedConfig"]["commonTlsContext"]
    common["alpnProtocols"] = ["h2"]
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    cluster["typedExtensionProtocolOptions"] = {
        options: {
            "@type": f"type.googleapis.com/{options}",
            "explicitHttpConfig": {"http2ProtocolOptions": {}},
        }
    }
    return cluster


def check_enforcement(configs: Sequence[Config], ids: Identities, engines: dict[str, Any]) -> None:
    """Every sidecar lets the client through; each one that decides denies an unnamed
    identity (the floor allows everything: it only measures the hop)."""
    for c in configs:
        engine = engines[c.label]
        before = engine.stats().checks
        status = harness.mtls_status(c.address, ids.intruder)
        if c.label == FLOOR:
            if status != 200 or engine.stats().checks != before + 1:
                raise SystemExit(f"{c.name}: the floor was not asked ({status})")
        elif status != 403:
            raise SystemExit(f"{c.name}: {harness.INTRUDER_ID} got {status}, expected 403")
        if c.label != "native" and engine.stats().checks != before + 1:
            raise SystemExit(f"{c.name}: denied without asking the engine")
        status, body = harness.http_get(f"http://127.0.0.1:{c.local_port}/")
        if status != 200 or body != harness.BACKEND_BODY:
            raise SystemExit(f"{c.name}: the client via its sidecar got {status} {body[:80]!r}")


def fixed_rate(
    url: str, rate: int, seconds: int, folder: Path, cpus: set[int] | None
) -> list[float]:
    """Latencies (ms) of every request at `rate` req/s over 4 keep-alive HTTP/1.1 connections."""
    log = folder / "h2load.log"
    log.unlink(missing_ok=True)
    clients = 4
    cmd = [
        "h2load",
        "--h1",
        f"-c{clients}",
        f"--rps={rate / clients:g}",
        f"-D{seconds}",
        "--warm-up-time=1",
        f"--log-file={log}",
        url,
    ]
    done = run_load(cmd, seconds, cpus)
    rows = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    bad = [r for r in rows if r[1] != "200"]
    if done.returncode != 0 or not rows or bad:
        raise SystemExit(
            f"h2load failed ({done.returncode}, {len(bad)} non-200 of {len(rows)}):"
            f" {done.stdout[-800:]}{done.stderr[-800:]}"
        )
    return [int(r[2]) / 1000 for r in rows]


def quantile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * p / 100 + 0.5) - 1))]


@dataclass
class Rate:
    """Both modes at one fixed request rate: every request's latency, CPU, paired round ratios."""

    latencies: dict[str, list[float]] = field(default_factory=dict)  # mode → ms
    server_cpu_s: dict[str, float] = field(default_factory=dict)
    engine_cpu_s: dict[str, float] = field(default_factory=dict)
    engine_us: dict[str, list[float]] = field(default_factory=dict)  # Check handler times
    paired: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def run(
        self,
        c: Config,
        rate: int,
        args: argparse.Namespace,
        engine: Engine,
        procs: Processes,
        layout: Layout,
        folder: Path,
    ) -> tuple[float, float]:
        server, before = procs.cpu_seconds(c.name), engine.stats()
        latencies = fixed_rate(
            f"http://127.0.0.1:{c.local_port}/", rate, args.seconds, folder, layout.others
        )
        after = engine.stats()
        self.server_cpu_s[c.label] = (
            self.server_cpu_s.get(c.label, 0.0) + procs.cpu_seconds(c.name) - server
        )
        self.engine_cpu_s[c.label] = (
            self.engine_cpu_s.get(c.label, 0.0) + after.cpu_s - before.cpu_s
        )
        self.engine_us.setdefault(c.label, []).extend(after.handler_us[len(before.handler_us) :])
        self.latencies.setdefault(c.label, []).extend(latencies)
        return quantile(latencies, 50), quantile(latencies, 99)


def measure(
    configs: Sequence[Config],
    engines: dict[str, Engine],
    args: argparse.Namespace,
    folder: Path,
    layout: Layout,
    procs: Processes,
) -> dict[str, Any]:
    for c in configs:
        progress(f"warm-up {c.name}")
        harness.wrk(f"http://127.0.0.1:{c.local_port}/", 1, 4, folder, layout.others)
    rates = {rate: Rate() for rate in args.rates}
    for r in range(args.rounds):
        for rate, state in rates.items():
            one = {}
            for c in configs if r % 2 == 0 else configs[::-1]:
                progress(
                    f"round {r + 1}/{args.rounds}: {c.name} at {rate:,} req/s ({args.seconds} s)"
                )
                one[c.label] = state.run(c, rate, args, engines[c.label], procs, layout, folder)
            for label in EXT_LABELS:
                for i, key in enumerate(("p50_ms", "p99_ms")):
                    state.paired[f"{label}:{key}"].append(one[label][i] / one["native"][i])
    closed = {}
    for c in configs:
        progress(f"closed loop: {c.name} (wrk -c{args.connections}, {args.closed_seconds} s)")
        run = harness.Run()
        run.add(
            harness.wrk(
                f"http://127.0.0.1:{c.local_port}/",
                args.closed_seconds,
                args.connections,
                folder,
                layout.others,
            )
        )
        closed[c.label] = run.summary()
    return {"rates": rates, "closed": closed}


def summarize(m: dict[str, Any]) -> dict[str, Any]:
    rates = {}
    for rate, state in m["rates"].items():
        modes = {}
        for label, lat in state.latencies.items():
            per_req = 1e6 / len(lat)
            modes[label] = {
                "requests": len(lat),
                "p50_ms": quantile(lat, 50),
                "p99_ms": quantile(lat, 99),
                "mean_ms": statistics.fmean(lat),
                "server_cpu_us_per_req": state.server_cpu_s[label] * per_req,
                "engine_cpu_us_per_req": state.engine_cpu_s[label] * per_req,
            }
        rates[rate] = {
            **modes,
            "over_native": {
                label: {k: modes[label][k] / modes["native"][k] for k in ("p50_ms", "p99_ms")}
                for label in EXT_LABELS
            },
            "paired_rounds": {k: sorted(v) for k, v in state.paired.items()},
            "engine_check_handler": {
                label: {
                    "calls": len(handler),
                    "p50_ms": quantile(handler, 50) / 1000,
                    "p99_ms": quantile(handler, 99) / 1000,
                }
                for label, handler in state.engine_us.items()
                if label != "native" and handler
            },
        }
    closed = m["closed"]
    ratios = {
        label: {k: closed[label][k] / closed["native"][k] for k in ("p50_ms", "p99_ms", "rps")}
        for label in EXT_LABELS
    }
    return {
        "fixed_rate": rates,
        "closed_loop": {**closed, "over_native": ratios},
        "opa_envoy_anchor": OPA_ANCHOR,
    }


def print_report(report: dict[str, Any]) -> None:
    m, a = report["machine"], report["settings"]
    print(f"machine : {m['cpu']}, {m['cores']} cores, {m['platform']}")
    print(f"software: Envoy {m['envoy']}; {m['wrk']}; h2load; Python {m['python']}")
    print(f"policies: {a['rules']:,} one-rule ALLOW policies (client named by the last)")
    print(f"pinning : {m['pinning']}; the engine (a Python process) unpinned")
    print(
        f"load    : fixed rates {', '.join(f'{r:,}' for r in a['rates'])} req/s (h2load --h1, "
        f"4 connections, every request timed), {a['rounds']} interleaved rounds × "
        f"{a['seconds']} s per mode and rate; closed loop wrk -c{a['connections']} "
        f"{a['closed_seconds']} s per mode"
    )
    print(
        f"load avg: {m['load_avg_start']:.2f} at start, {m['load_avg_end']:.2f} at end "
        "(shared machine)"
    )
    if "fixed_rate" in report:
        print_end_to_end(report)
    print_engine_alone(report["engine_alone"], a["engine_seconds"] * a["rounds"])


def print_end_to_end(report: dict[str, Any]) -> None:
    a = report["settings"]
    print()
    print("   req/s  mode                   p50 ms  p99 ms   server CPU µs/req  engine CPU µs/req")
    for rate, row in report["fixed_rate"].items():
        for label in ("native", *EXT_LABELS):
            x = row[label]
            print(
                f"{rate:>8,}  {label:<21} {x['p50_ms']:7.3f} {x['p99_ms']:7.3f} "
                f"{x['server_cpu_us_per_req']:19.1f} "
                f"{x['engine_cpu_us_per_req']:18.1f}"
            )
        for label in EXT_LABELS:
            q = row["over_native"][label]
            h = row["engine_check_handler"].get(label, {"p50_ms": 0.0, "p99_ms": 0.0})
            p50, p99 = (
                row["paired_rounds"][f"{label}:p50_ms"],
                row["paired_rounds"][f"{label}:p99_ms"],
            )
            added = row[label]["p50_ms"] - row["native"]["p50_ms"]
            print(
                f"          {label}/native: p50 {q['p50_ms']:.2f}× (+{added:.2f} ms; rounds "
                f"{p50[0]:.2f}-{p50[-1]:.2f}), p99 {q['p99_ms']:.2f}× (rounds {p99[0]:.2f}-"
                f"{p99[-1]:.2f}); engine handler p50 {h['p50_ms']:.3f} ms, p99 {h['p99_ms']:.3f} ms"
            )
        p50 = {label: row[label]["p50_ms"] for label in ("native", "ext_authz_http", FLOOR)}
        print(
            f"          the worker path (`server --ext-authz-workers 1`) against the same front "
            f"in a bench process: {row[WORKER]['p50_ms'] - p50['ext_authz_http']:+.2f} ms p50"
        )
        print(
            f"          gRPC Check answered by the worker (h2, mTLS) against grpc.aio (plaintext): "
            f"{row[GRPC_WORKER]['p50_ms'] - row['ext_authz']['p50_ms']:+.2f} ms p50, "
            f"{row[GRPC_WORKER]['p99_ms'] - row['ext_authz']['p99_ms']:+.2f} ms p99"
        )
        print(
            f"          split of the HTTP front's added p50: Envoy's hop (floor − native) "
            f"{p50[FLOOR] - p50['native']:+.2f} ms, ours (front − floor) "
            f"{p50['ext_authz_http'] - p50[FLOOR]:+.2f} ms"
        )
    c = report["closed_loop"]
    print()
    print(f"closed loop (wrk -c{a['connections']}):")
    for label in ("native", *EXT_LABELS):
        ratio = f", {c['over_native'][label]['rps']:.2f}× native" if label != "native" else ""
        print(
            f"  {label:<21} p50 {c[label]['p50_ms']:.3f} ms, p99 {c[label]['p99_ms']:.3f} ms, "
            f"{c[label]['rps']:,.0f} req/s{ratio}"
        )
    o = report["opa_envoy_anchor"]
    print(
        f"anchor  : OPA-Envoy reports ≈{o['p50_ms']} ms median, {o['p99_ms']} ms p99 evaluation "
        "at 1,000 req/s; compare with the engine Check handler figures (the handler excludes "
        "gRPC and protobuf framing; engine CPU µs/req includes them)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 s, 2 s closed loop")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--rules", type=int, default=100, help="ALLOW policies on the server")
    p.add_argument("--rates", default="200,1000", help="fixed request rates (req/s)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 4)")
    p.add_argument("--seconds", type=int, help="seconds per mode, rate and round (default 5)")
    p.add_argument("--closed-seconds", type=int, help="closed-loop seconds per mode (default 8)")
    p.add_argument("--connections", type=int, default=4, help="wrk connections (closed loop)")
    p.add_argument("--no-pin", action="store_true", help="let the OS place every process")
    p.add_argument(
        "--engine-seconds", type=int, help="seconds per servicer and round, engine alone (5)"
    )
    p.add_argument(
        "--engine-only", action="store_true", help="only the engine alone (no Envoy, ~1 min)"
    )
    args = p.parse_args(argv)
    args.engine_seconds = args.engine_seconds or (2 if args.quick else 5)
    args.rates = [int(r) for r in args.rates.split(",")]
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.seconds = args.seconds or (3 if args.quick else 5)
    args.closed_seconds = args.closed_seconds or (2 if args.quick else 8)
    return args


def end_to_end(
    args: argparse.Namespace,
    layout: Layout,
    folder: Path,
    ids: harness.Identities,
    backend_port: int,
) -> dict[str, Any]:
    """Native RBAC against ext_authz through the sidecars, the engine in a process of its own."""
    addresses = harness.server_addresses(6)
    native_address, ext_address, http_address, floor_address, worker_address, grpc_address = (
        addresses
    )
    progress(f"compiling {args.rules:,} rules twice ...")
    native, _, compiled, _ = harness.our_config(
        args.rules, native_address, backend_port, ids.server
    )
    native.label = "native"
    ext, ext_docs = ext_authz_config(args.rules, ext_address, backend_port, ids)
    http, http_docs = ext_authz_config(args.rules, http_address, backend_port, ids, "http")
    floor, _ = ext_authz_config(args.rules, floor_address, backend_port, ids, "http")
    floor.label = FLOOR
    worker, _ = ext_authz_config(args.rules, worker_address, backend_port, ids, "http")
    worker.label = WORKER
    grpc_worker, _ = ext_authz_config(args.rules, grpc_address, backend_port, ids)
    grpc_worker.label = GRPC_WORKER
    configs = [native, ext, grpc_worker, http, worker, floor]
    for c in configs:
        c.local_port = harness.free_port()
    procs = Processes(folder)
    grpc_engine = Engine(ext_docs, None)
    tls = ids.server
    http_engine = Engine(
        http_docs, None, "engine-mtls", (tls.certificate_chain, tls.private_key, tls.trust_bundle)
    )
    engines: dict[str, Any] = {
        "native": grpc_engine,
        "ext_authz": grpc_engine,
        "ext_authz_http": http_engine,
    }
    worker_engine = WorkerEngine(http_docs, ids, folder)  # the production worker path
    engines[WORKER] = engines[GRPC_WORKER] = worker_engine
    try:
        progress("starting the Envoys ...")
        floor_engine = FloorEngine(procs, ids, None)  # unpinned, as the engines
        engines[FLOOR] = floor_engine
        ext.extra_clusters = [loopback_cluster(AUTHZ_CLUSTER, grpc_engine.port)]
        http.extra_clusters = [mtls_cluster(http_engine.port, ids)]
        floor.extra_clusters = [mtls_cluster(floor_engine.port, ids)]
        worker.extra_clusters = [mtls_cluster(worker_engine.port, ids)]
        grpc_worker.extra_clusters = [h2_mtls_cluster(worker_engine.port, ids)]
        floor_engine.wait_ready()
        harness.start(procs, configs, compiled, ids, backend_port, layout)
        check_enforcement(configs, ids, engines)
        progress("all modes: 200 for the client, 403 for an unnamed identity but on the floor")
        return measure(configs, engines, args, folder, layout, procs)
    finally:
        procs.stop_all()
        grpc_engine.stop()
        http_engine.stop()
        worker_engine.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        print(
            f"bench_ext_authz: needs {', '.join(missing)}: {harness.INSTALL_HINT}", file=sys.stderr
        )
        return 2
    signal.signal(signal.SIGTERM, harness.stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    layout = Layout.choose(pin=not args.no_pin)
    info = harness.machine(layout)
    with tempfile.TemporaryDirectory(prefix="bench-ext-authz-") as tmp:
        folder = Path(tmp)
        ids = harness.mint_identities(folder)
        backend_port = harness.free_port()
        measured = None if args.engine_only else end_to_end(args, layout, folder, ids, backend_port)
        address = "127.0.213.1"  # the engine alone: named in the CheckRequest, never bound
        docs = ext_documents(args.rules, address, backend_port)
        tls = (ids.server.certificate_chain, ids.server.private_key)
        alone = engine_alone(
            lambda servicer: Engine(docs, layout.server, servicer, tls),
            address,
            layout,
            folder,
            args.engine_seconds,
            args.rounds,
        )
    info["load_avg_end"] = os.getloadavg()[0]
    report = {
        "machine": info,
        "settings": {
            k: getattr(args, k)
            for k in (
                "rules",
                "rates",
                "rounds",
                "seconds",
                "closed_seconds",
                "connections",
                "engine_seconds",
            )
        },
        **(summarize(measured) if measured else {}),
        "engine_alone": alone,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every Envoy stopped", file=sys.stderr)
        sys.exit(130)
