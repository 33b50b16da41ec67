"""Tracing benchmark: sidecar latency (p50/p99), throughput and server-sidecar CPU per request
with decision tracing on (Envoy's OpenTelemetry tracer, the decision Lua filter, custom tags,
OTLP/gRPC export to a collector) versus off, same policies, same run.

    .venv/bin/python bench/bench_tracing.py          # 20 s per config, ~2 min
    .venv/bin/python bench/bench_tracing.py --quick  # 3 s per config
    .venv/bin/python bench/bench_tracing.py --json   # one JSON object on stdout

bench_dataplane.py's set-up (the shared bench/_harness.py): wrk → client sidecar (tcp_proxy, mTLS)
→ server sidecar under test (TLS + SPIFFE validator, HCM, RBAC, router) → backend Envoy. The
server's listener is our translation of 100 one-rule ALLOW policies (`--rules`), with
TranslationContext(tracing=None) for "off" and tracing to an in-process OTLP/gRPC collector
(counting spans, real wire format) at 100 % and at 1 % random sampling. A/A control: a second
"off" sidecar, showing the noise between identical configs. Rounds are interleaved (forward,
then reverse order) and the ratios are on the merged rounds. "nolua100" and "nolua1" are on100
and on1 without the decision Lua filter, to split the cost between Envoy's tracer/exporter and
the tagging (which is skipped for requests that are not sampled: on1 - nolua1 is its cost;
"always1" is on1 with the filter run on every request, as before that skip). Last, the
tagging alone (bench/_tagging_alone.py): the filter's CPU per request on one Envoy with nothing
else in the path, where the sidecars' TLS and RBAC noise does not hide it. Before
measuring, every config must
answer 200 to the client and 403 to an unnamed identity, and the traced config must deliver
spans tagged with the decision.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import _harness as harness
import grpc
from _harness import PORT, SERVER, Config, Layout, Processes, Run, progress
from _tagging_alone import tagging_alone
from meshwarden.xds import CLUSTER, LISTENER, TracingTarget, TranslationContext, workload_resources
from meshwarden.xds._tracing import TRACING_CLUSTER
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc


class SpanCounter(pb_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC collector that counts spans and keeps the last one's attributes."""

    def __init__(self) -> None:
        self.spans = 0
        self.decisions = 0  # spans tagged with meshwarden.authz.decision
        self.last: dict[str, str] = {}
        self._lock = threading.Lock()

    def Export(self, request: pb.ExportTraceServiceRequest, context: Any) -> Any:
        count, decisions, last = 0, 0, None
        for rs in request.resource_spans:
            for scope in rs.scope_spans:
                count += len(scope.spans)
                for span in scope.spans:
                    tags = {a.key: a.value.string_value for a in span.attributes}
                    if "meshwarden.authz.decision" in tags:
                        decisions, last = decisions + 1, tags
        with self._lock:
            self.spans += count
            self.decisions += decisions
            self.last = last or self.last
        return pb.ExportTraceServiceResponse()


def serve_collector(state: Path) -> None:
    """The collector process: serve OTLP/gRPC, write {port, spans, last} to `state` twice a
    second. A process of its own: gRPC threads and the fork() of every wrk run do not mix."""
    counter = SpanCounter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_TraceServiceServicer_to_server(counter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    while True:
        with counter._lock:
            snapshot = {
                "port": port,
                "spans": counter.spans,
                "decisions": counter.decisions,
                "last": counter.last,
            }
        (state.parent / "tmp.json").write_text(json.dumps(snapshot))
        (state.parent / "tmp.json").replace(state)
        time.sleep(0.5)


class Collector:
    def __init__(self, folder: Path, cpus: set[int] | None) -> None:
        self.state = folder / "collector.json"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-collector", str(self.state)],
            preexec_fn=harness.child_setup(cpus),
        )
        deadline = time.monotonic() + 20
        while not self.state.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("the OTLP collector process did not start")
            time.sleep(0.1)
        self.port = int(self.read()["port"])

    def read(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.state.read_text())
        return data

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def traced_config(
    base: Config,
    label: str,
    address: str,
    ids: harness.Identities,
    compiled: Any,
    target: TracingTarget,
) -> Config:
    ctx = TranslationContext(static_tls=ids.server, inline_routes=True, tracing=target)
    resources = workload_resources(compiled, SERVER, ctx)
    [listener] = [r for r in resources[LISTENER] if r["name"] == f"in:{PORT}"]
    listener = copy.deepcopy(listener)
    listener["address"]["socketAddress"]["address"] = address
    [otlp] = [c for c in resources[CLUSTER] if c["name"] == TRACING_CLUSTER]
    return Config(label, base.rules, address, listener, base.local_cluster, extra_clusters=[otlp])


def _without_lua(config: Config) -> Config:
    [hcm] = config.listener["filterChains"][0]["filters"]
    filters = hcm["typedConfig"]["httpFilters"]
    assert filters[0]["name"] == "envoy.filters.http.lua", "the decision filter comes first"
    del filters[0]
    return config


def _lua_on_every_request(config: Config) -> Config:
    """The tagging filter without the matcher that skips requests not sampled (as before)."""
    [hcm] = config.listener["filterChains"][0]["filters"]
    filters = hcm["typedConfig"]["httpFilters"]
    filters[0] = filters[0]["typedConfig"]["extensionConfig"]
    return config


def prepare(
    rules: int, backend_port: int, ids: harness.Identities, otlp_port: int
) -> tuple[list[Config], Any]:
    addresses = harness.server_addresses(7)
    off, _docs, compiled, _ = harness.our_config(rules, addresses[0], backend_port, ids.server)
    off.label = "off"
    control = Config("control", rules, addresses[1], copy.deepcopy(off.listener), off.local_cluster)
    control.listener["address"]["socketAddress"]["address"] = addresses[1]
    # label → (sampling %, how the tagging filter is changed): nolua* are the same traced configs
    # without the Lua filter (where the cost goes); always1 runs it on every request, as before
    # requests not sampled skipped it
    traced = {
        "on100": (100.0, None),
        "on1": (1.0, None),
        "nolua100": (100.0, _without_lua),
        "nolua1": (1.0, _without_lua),
        "always1": (1.0, _lua_on_every_request),
    }
    configs = [off, control]
    for (label, (sampling, change)), address in zip(traced.items(), addresses[2:], strict=True):
        target = TracingTarget("127.0.0.1", otlp_port, sampling=sampling)
        config = traced_config(off, label, address, ids, compiled, target)
        configs.append(change(config) if change else config)
    for c in configs:
        c.local_port = harness.free_port()
    return configs, compiled


def measure(
    configs: list[Config], args: argparse.Namespace, folder: Path, layout: Layout, procs: Processes
) -> dict[str, Run]:
    runs = {c.name: Run() for c in configs}
    url = {c.name: f"http://127.0.0.1:{c.local_port}/" for c in configs}
    for c in configs:
        progress(f"warm-up {c.name} ({args.warmup:g} s)")
        harness.wrk(url[c.name], args.warmup, args.connections, folder, layout.others)
    slice_s = args.seconds / args.rounds
    for r in range(args.rounds):
        for c in configs if r % 2 == 0 else configs[::-1]:
            progress(f"round {r + 1}/{args.rounds}: {c.name} ({slice_s:g} s)")
            before = procs.cpu_seconds(c.name)
            out = harness.wrk(url[c.name], slice_s, args.connections, folder, layout.others)
            runs[c.name].add(out, {"server": procs.cpu_seconds(c.name) - before})
    return runs


def check_spans(collector: Collector, config: Config) -> None:
    """The traced config's spans arrive tagged with the decision (else the run is void)."""
    time.sleep(1.5)  # spans of the enforcement checks arrive first
    before = collector.read()["decisions"]
    status, _ = harness.http_get(f"http://127.0.0.1:{config.local_port}/")
    assert status == 200, f"{config.name}: expected 200, got {status}"
    deadline = time.monotonic() + 10
    while collector.read()["decisions"] == before and time.monotonic() < deadline:
        time.sleep(0.2)
    tags = collector.read()["last"]
    if tags.get("meshwarden.authz.decision") != "allow":
        raise SystemExit(f"{config.name}: no decision span reached the collector ({tags})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 s per config, 1 s warm-up")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--rules", type=int, default=100, help="ALLOW policies on the server")
    p.add_argument("--seconds", type=float, help="measured seconds per config (default 20)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per config")
    p.add_argument("--connections", type=int, default=4, help="wrk connections (1 thread)")
    p.add_argument("--no-pin", action="store_true", help="let the OS place every process")
    p.add_argument("--serve-collector", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.seconds = args.seconds or (3.0 if args.quick else 20.0)
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.seconds = float(max(1, round(args.seconds / args.rounds)) * args.rounds)
    args.warmup = float(max(1, round(1.0 if args.quick else args.warmup)))
    return args


def report(configs: list[Config], runs: dict[str, Run], spans: dict[str, int]) -> dict[str, Any]:
    summary = {c.label: runs[c.name].summary() for c in configs}
    off = summary["off"]
    keys = ("p50_ms", "p99_ms", "rps", "server_cpu_us_per_req")
    return {
        "configs": summary,
        "ratios_vs_off": {
            label: {k: s[k] / off[k] for k in keys}
            for label, s in summary.items()
            if label != "off"
        },
        "spans": spans,
        "requests": {c.label: runs[c.name].requests for c in configs},
    }


def print_report(out: dict[str, Any]) -> None:
    m = out["machine"]
    print(f"machine: {m['cpu']} ({m['cores']} cores), {m['platform']}, Envoy {m['envoy']}")
    print(f"pinning: {m['pinning']}; load avg {m['load_avg_start']:.2f} → {m['load_avg_end']:.2f}")
    s = out["settings"]
    print(
        f"{s['rules']} ALLOW policies; {s['seconds']:g} s per config in {s['rounds']} "
        f"interleaved rounds; wrk {s['connections']} connections\n"
    )
    print(
        f"{'config':<10}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>10}{'server µs/req':>15}"
        f"{'p50 ×':>8}{'p99 ×':>8}{'req/s ×':>9}{'CPU ×':>8}"
    )
    for label, fig in out["configs"].items():
        r = out["ratios_vs_off"].get(label)
        ratios = f"{'(baseline)':>33}"
        if r:
            ratios = (
                f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['rps']:>9.2f}"
                f"{r['server_cpu_us_per_req']:>8.2f}"
            )
        print(
            f"{label:<10}{fig['p50_ms']:>9.3f}{fig['p99_ms']:>9.3f}{fig['rps']:>10.0f}"
            f"{fig['server_cpu_us_per_req']:>15.1f}{ratios}"
        )
    spans, requests = out["spans"], out["requests"]
    expected = (
        requests["on100"]
        + requests["nolua100"]
        + (requests["on1"] + requests["nolua1"] + requests["always1"]) / 100
    )
    print(
        f"\nspans received by the collector: {spans['total']:,}; expected about "
        f"{expected:,.0f} (every request of on100 and nolua100, 1 in 100 of the 1 % ones) "
        "plus the warm-ups"
    )
    print("nolua100, nolua1 = on100, on1 without the Lua filter that tags the decision.")
    on1, bare1 = out["configs"]["on1"], out["configs"]["nolua1"]
    tagging = on1["server_cpu_us_per_req"] - bare1["server_cpu_us_per_req"]
    print(
        f"decision tagging at 1 % sampling (on1 - nolua1): {tagging:+.1f} µs of sidecar CPU per "
        "request (the filter is skipped on the 99 % not sampled)"
    )
    always = out["configs"]["always1"]["server_cpu_us_per_req"] - bare1["server_cpu_us_per_req"]
    print(f"  ... with the filter on every request as before (always1 - nolua1): {always:+.1f} µs")
    print("control = a second identical 'off' sidecar: its ratio is this machine's noise.")
    alone = out["tagging_alone_cpu_us_per_req"]
    print(
        f"\ntagging alone (one Envoy, direct response, 1 % sampling; CPU µs/req): none "
        f"{alone['none']:.1f}, always {alone['always']:.1f} "
        f"({alone['always'] - alone['none']:+.1f}), matcher {alone['matcher']:.1f} "
        f"({alone['matcher'] - alone['none']:+.1f} per request not sampled)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_collector:
        serve_collector(args.serve_collector)
        return 0
    if shutil.which("wrk") is None:
        print(f"bench_tracing: needs `wrk`: {harness.INSTALL_HINT}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, harness.stop_on_sigterm)
    layout = Layout.choose(pin=not args.no_pin)
    info = harness.machine(layout)
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmp:
        folder = Path(tmp)
        ids = harness.mint_identities(folder)
        backend_port = harness.free_port()
        collector = Collector(folder, layout.others)
        configs, compiled = prepare(args.rules, backend_port, ids, collector.port)
        procs = Processes(folder)
        try:
            progress(f"starting {len(configs) + 2} Envoys ...")
            harness.start(procs, configs, compiled, ids, backend_port, layout)
            for c in configs:
                harness.check_enforcement(c, ids, compiled)
            check_spans(collector, configs[2])
            progress("403 for an unnamed identity, 200 for the client, decision spans arrive")
            runs = measure(configs, args, folder, layout, procs)
            time.sleep(2)  # let the last batches of spans arrive
            spans = {"total": int(collector.read()["spans"])}
            slice_s = args.seconds / args.rounds
            tagging = tagging_alone(collector.port, procs, layout, slice_s, args.rounds)
        finally:
            procs.stop_all()
            collector.stop()
    info["load_avg_end"] = os.getloadavg()[0]
    keys = ("rules", "seconds", "rounds", "warmup", "connections")
    settings = {k: getattr(args, k) for k in keys}
    out = {"machine": info, "settings": settings, **report(configs, runs, spans)}
    out["tagging_alone_cpu_us_per_req"] = tagging
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print_report(out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every Envoy stopped", file=sys.stderr)
        sys.exit(130)
