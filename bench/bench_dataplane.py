"""Data-plane benchmark: request latency (p50/p99) and throughput through a client sidecar →
server sidecar pair of real Envoys on loopback, with 10 / 1,000 / 10,000 identity rules in the
server's policies, our RBAC `matcher` compilation against an Istio-style linear `rules` one.

    .venv/bin/python bench/bench_dataplane.py          # issue's sizes, 20 s per config, ~3.5 min
    .venv/bin/python bench/bench_dataplane.py --quick  # 3 s per config
    .venv/bin/python bench/bench_dataplane.py --json   # one JSON object on stdout

Path of one request (HTTP/1.1 keep-alive, `wrk` with fixed connections):

    wrk → 127.0.0.1:localPort  client sidecar (our outbound listener: tcp_proxy → mTLS cluster)
        → 127.0.213.x:8080      server sidecar (our inbound listener: TLS + SPIFFE validator, HCM,
                               RBAC, router)   ← the only thing that differs between configs
        → 127.0.0.1:backend    backend Envoy answering with `direct_response`

Policies: N AuthorizationPolicy documents `bench/allow-00000` … selecting the server, each one
ALLOW rule naming one exact SPIFFE ID on port 8080; the benchmark client's identity is named by
the LAST one in name order, the worst case for a linear scan. "ours" is the server listener
from `workload_resources(..., TranslationContext(static_tls=..., inline_routes=True))`;
"linear" is the same listener with its RBAC filter replaced by what istiod generates for the
same documents: one `rules` policy per rule (`ns[bench]-policy[allow-00000]-rule[0]`, permission
destination_port, principal `authenticated.principal_name` exact), which Envoy scans in name order.

Every server Envoy is started at once (one address each), plus an A/A control (a second sidecar
with the smallest size's listener); measurement rounds are interleaved (forward, then reverse
order) so drift on this shared machine hits every config alike; the rounds' latency quantiles
are merged, and ratios are also taken round by round (paired). Before measuring, each config must
answer 403 to a client identity that no rule names (and count it as an RBAC denial) and 200 from
the backend to the benchmark client; a run with any non-2xx or socket error stops.
Prints figures only (target from issue #4: ours at 10,000 rules within 5 % of ours at 10).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from _harness import (
    _T,
    CLIENT_ID,
    INSTALL_HINT,
    Config,
    Identities,
    Layout,
    Processes,
    Run,
    check_enforcement,
    free_port,
    machine,
    mint_identities,
    our_config,
    progress,
    server_addresses,
    start,
    stop_on_sigterm,
    wrk,
)
from meshwarden.engine import (
    CompiledMesh,
    InputLimits,
    check_documents,
    parse_text,
)

# --------------------------------------------------------------------------- policies

# generated input, not a policy author's file: the per-file input limits do not apply
BENCH_LIMITS = InputLimits(documents=1_000_000, nodes=100_000_000, file_bytes=1 << 40)


def check_shape(docs: list[dict[str, Any]]) -> None:
    """`check_documents` (semantic errors and warnings) must find nothing. Its shadow analysis
    is quadratic in the rules that select one workload (minutes at 10,000), so this runs on the
    smallest size only; the larger sizes are supersets of the same shape."""
    documents, _ = parse_text(yaml.safe_dump_all(docs, sort_keys=False), "bench.yaml", BENCH_LIMITS)
    compiled, found = check_documents(documents)
    if compiled is None or found:
        raise SystemExit("bench policies do not check:\n" + "\n".join(map(str, found)))


def istio_style_rbac(docs: list[dict[str, Any]], stat_prefix: str) -> dict[str, Any]:
    """The HTTP RBAC filter istiod generates for ALLOW policies: one classic `rules` policy per
    rule, `ns[NS]-policy[NAME]-rule[I]`, permissions and principals as and/or of the fields."""
    policies = {}
    for doc in docs:
        if doc["kind"] != "AuthorizationPolicy":
            continue
        spec, meta = doc["spec"], doc["metadata"]
        assert spec["action"] == "ALLOW", "the linear baseline only models ALLOW policies"
        for i, rule in enumerate(spec["rules"]):
            ports = [p for op in rule["to"] for p in op["ports"]]
            ids = [x for src in rule["from"] for x in src["identities"]]
            assert set(rule) == {"from", "to"} and all("*" not in x for x in ids)
            policies[f"ns[{meta['namespace']}]-policy[{meta['name']}]-rule[{i}]"] = {
                "permissions": [
                    {
                        "andRules": {
                            "rules": [
                                {"orRules": {"rules": [{"destinationPort": int(p)} for p in ports]}}
                            ]
                        }
                    }
                ],
                "principals": [
                    {
                        "andIds": {
                            "ids": [
                                {
                                    "orIds": {
                                        "ids": [
                                            {"authenticated": {"principalName": {"exact": x}}}
                                            for x in ids
                                        ]
                                    }
                                }
                            ]
                        }
                    }
                ],
            }
    return {
        "name": "envoy.filters.http.rbac",
        "typedConfig": {
            "@type": _T + "envoy.extensions.filters.http.rbac.v3.RBAC",
            "rulesStatPrefix": stat_prefix,
            "rules": {"action": "ALLOW", "policies": policies},
        },
    }


# --------------------------------------------------------------------------- configs


def _http_filters(listener: dict[str, Any]) -> list[dict[str, Any]]:
    [chain] = listener["filterChains"]
    [hcm] = chain["filters"]
    filters: list[dict[str, Any]] = hcm["typedConfig"]["httpFilters"]
    return filters


def linear_listener(
    ours: dict[str, Any], docs: list[dict[str, Any]], address: str
) -> dict[str, Any]:
    """Our listener with its one RBAC filter swapped for the Istio-style one: same TLS, HCM,
    router and stat prefix."""
    listener = copy.deepcopy(ours)
    listener["address"]["socketAddress"]["address"] = address
    filters = _http_filters(listener)
    rbac = [i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.rbac"]
    assert len(rbac) == 1, f"expected one RBAC filter in our listener, got {len(rbac)}"
    prefix = filters[rbac[0]]["typedConfig"]["rulesStatPrefix"]
    filters[rbac[0]] = istio_style_rbac(docs, prefix)
    policies = filters[rbac[0]]["typedConfig"]["rules"]["policies"]
    assert CLIENT_ID in json.dumps(policies[max(policies)]), "the client must match last"
    return listener


# --------------------------------------------------------------------------- processes


# --------------------------------------------------------------------------- identities


# --------------------------------------------------------------------------- enforcement


# --------------------------------------------------------------------------- load


# --------------------------------------------------------------------------- run


def prepare(
    sizes: Sequence[int], backend_port: int, ids: Identities
) -> tuple[list[Config], dict[int, CompiledMesh]]:
    """(ours, linear) per size, then the A/A control (a second sidecar with exactly the
    smallest size's listener), and the compiled mesh of each size."""
    addresses = server_addresses(2 * len(sizes) + 1)
    configs, meshes = [], {}
    our_config(1, addresses[0], backend_port, ids.server)  # imports envoy-data-plane: not timed
    for k, n in enumerate(sizes):
        progress(f"compiling {n:,} rules ...")
        ours, docs, compiled, timing = our_config(n, addresses[2 * k], backend_port, ids.server)
        meshes[n] = compiled
        if k == 0:
            check_shape(docs)
        linear = Config(
            "linear",
            n,
            addresses[2 * k + 1],
            linear_listener(ours.listener, docs, addresses[2 * k + 1]),
            ours.local_cluster,
        )
        linear.figures["listener_json_bytes"] = len(json.dumps(linear.listener))
        ours.figures.update(timing)
        configs += [ours, linear]
    small = configs[0]
    control = copy.deepcopy(small.listener)
    control["address"]["socketAddress"]["address"] = addresses[-1]
    configs.append(
        Config(
            "control",
            small.rules,
            addresses[-1],
            control,
            small.local_cluster,
            figures={"listener_json_bytes": len(json.dumps(control))},
        )
    )
    for c in configs:
        c.local_port = free_port()
    return configs, meshes


def measure(
    configs: list[Config], args: argparse.Namespace, folder: Path, layout: Layout, procs: Processes
) -> dict[str, Run]:
    runs = {c.name: Run() for c in configs}
    url = {c.name: f"http://127.0.0.1:{c.local_port}/" for c in configs}
    for c in configs:
        progress(f"warm-up {c.name} ({args.warmup:g} s)")
        wrk(url[c.name], args.warmup, args.connections, folder, layout.others)
    slice_s = args.seconds / args.rounds  # whole seconds (wrk -d), see parse_args
    order = sorted(configs, key=lambda c: ("ours", "control", "linear").index(c.label))
    for r in range(args.rounds):
        for c in order if r % 2 == 0 else order[::-1]:
            progress(f"round {r + 1}/{args.rounds}: {c.name} ({slice_s:g} s)")
            envoys = {"server": c.name, "client": "client"}
            before = {k: procs.cpu_seconds(v) for k, v in envoys.items()}
            try:
                out = wrk(url[c.name], slice_s, args.connections, folder, layout.others)
            except SystemExit as failed:
                raise SystemExit(f"{failed}\n{procs.diagnose([c.name, 'client'])}") from None
            runs[c.name].add(out, {k: procs.cpu_seconds(v) - before[k] for k, v in envoys.items()})
    return runs


def results(configs: list[Config], runs: dict[str, Run]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pairs = [c for c in configs if c.label in ("ours", "linear")]
    for ours, linear in zip(pairs[::2], pairs[1::2], strict=True):
        o, lin = runs[ours.name].summary(), runs[linear.name].summary()
        rows.append(
            {
                "rules": ours.rules,
                "ours": {**o, **ours.figures, **_extra(runs[ours.name])},
                "linear": {**lin, **linear.figures, **_extra(runs[linear.name])},
                "ours_over_linear": {k: o[k] / lin[k] for k in o},
            }
        )
    control = runs[f"control-{rows[0]['rules']}"]
    rows[0]["control"] = {**control.summary(), **_extra(control)}
    base = rows[0]["ours"]
    for row in rows:
        row["ours_over_ours_smallest"] = {k: row["ours"][k] / base[k] for k in RATIO_KEYS}
    return rows


RATIO_KEYS = ("p50_ms", "p99_ms", "rps", "server_cpu_us_per_req")


def _extra(run: Run) -> dict[str, Any]:
    return {
        "requests": run.requests,
        "round_p50_ms": run.spread("p50_ms"),
        "round_rps": run.spread("rps"),
    }


def verdicts(rows: list[dict[str, Any]], runs: dict[str, Run]) -> dict[str, dict[str, Any]]:
    """Issue #4: ours at the largest size within 5 % of ours at the smallest. Rounds of the two
    run seconds apart (interleaved), so the verdict takes the median of the paired rounds'
    ratios, which drift and neighbours on the shared machine affect least; the pooled ratio
    (all rounds merged) is reported beside it, and so is the same ratio between two identical
    sidecars (the A/A control: what "no difference" looks like on this machine)."""
    first, last = rows[0], rows[-1]
    small, large = runs[f"ours-{first['rules']}"], runs[f"ours-{last['rules']}"]
    control = runs[f"control-{first['rules']}"]
    out = {}
    checks = (
        ("p50_ms", "p50", True),
        ("p99_ms", "p99", True),
        ("rps", "req/s", False),
        ("server_cpu_us_per_req", "server CPU/req", True),
    )
    for key, what, higher_is_worse in checks:
        paired = _paired(small, large, key)
        median = statistics.median(paired)
        same = _paired(small, control, key)
        target = 1.05 if higher_is_worse else 0.95
        out[f"ours_{key}_ratio"] = {
            "label": f"ours {what} at {last['rules']:,} / at {first['rules']:,} rules",
            "value": median,
            "target": target,
            "pass": median <= target if higher_is_worse else median >= target,
            "pooled": last["ours"][key] / first["ours"][key],
            "paired_rounds": paired,
            "control": {"median": statistics.median(same), "min": same[0], "max": same[-1]},
        }
    return out


def _paired(a: Run, b: Run, key: str) -> list[float]:
    return sorted(y[key] / x[key] for x, y in zip(a.rounds, b.rounds, strict=True))


def print_report(report: dict[str, Any]) -> None:
    m, a = report["machine"], report["settings"]
    print(f"machine : {m['cpu']}, {m['cores']} cores, {m['platform']}")
    print(f"software: Envoy {m['envoy']}; {m['wrk']}; Python {m['python']}")
    print(
        f"load    : wrk -t1 -c{a['connections']} HTTP/1.1 keep-alive, {a['seconds']:g} s per "
        f"config in {a['rounds']} interleaved rounds after {a['warmup']:g} s warm-up; every "
        f"Envoy --concurrency 1; pinning: {m['pinning']}"
    )
    print(
        f"load avg: {m['load_avg_start']:.2f} at start, {m['load_avg_end']:.2f} at end "
        "(shared machine)"
    )
    b = report["backend_alone"]
    print(
        f"backend : Envoy direct_response, wrk straight to it: {b['rps']:,.0f} req/s, "
        f"p50 {b['p50_ms']:.3f} ms, p99 {b['p99_ms']:.3f} ms (not the bottleneck)"
    )
    print()
    print("   rules  config   p50 ms (rounds' p50)   p99 ms     req/s   CPU µs/req: server client")
    for r in report["results"]:
        for label in [k for k in ("ours", "control", "linear") if k in r]:
            x = r[label]
            lo, hi = x["round_p50_ms"]
            print(
                f"{r['rules']:>8,}  {label:<7} {x['p50_ms']:7.3f} ({lo:6.3f}-{hi:<6.3f}) "
                f"{x['p99_ms']:8.3f} {x['rps']:9,.0f} {x['server_cpu_us_per_req']:13.1f} "
                f"{x['client_cpu_us_per_req']:7.1f}"
            )
    print()
    print(
        "   rules   ours / linear: p50   p99  req/s  server CPU"
        "    ours / ours(smallest): p50   p99  req/s  server CPU"
    )
    for r in report["results"]:
        q, s = r["ours_over_linear"], r["ours_over_ours_smallest"]
        print(
            f"{r['rules']:>8,}  {q['p50_ms']:20.2f} {q['p99_ms']:5.2f} {q['rps']:6.2f} "
            f"{q['server_cpu_us_per_req']:11.2f} {s['p50_ms']:28.3f} {s['p99_ms']:5.3f} "
            f"{s['rps']:6.3f} {s['server_cpu_us_per_req']:11.3f}"
        )
    print()
    print(
        "           our translator          listener JSON given to Envoy     ours as"
        "     Envoy heap MB"
    )
    print(
        "   rules   compile s  translate s  encode s    ours        linear     protobuf"
        "    ours  linear"
    )
    for r in report["results"]:
        o, lin = r["ours"], r["linear"]
        print(
            f"{r['rules']:>8,}  {o['load_compile_s']:9.2f} {o['translate_s']:12.3f} "
            f"{o['encode_s']:9.2f} {_size(o['listener_json_bytes']):>9} "
            f"{_size(lin['listener_json_bytes']):>11} {_size(o['listener_proto_bytes']):>11} "
            f"{o['envoy_allocated_mb']:9.1f} {lin['envoy_allocated_mb']:6.1f}"
        )
    print(
        "(compile s = YAML → loader → compile_documents; translate s = workload_resources; "
        "encode s = ResourceEncoder on a cold cache)"
    )
    print()
    first = report["results"][0]["rules"]
    for t in report["targets"].values():
        sign = "≤" if t["target"] > 1 else "≥"
        r = t["paired_rounds"]
        print(
            f"target  : {t['label']} = {t['value']:.3f} ({sign} {t['target']}) "
            f"{'PASS' if t['pass'] else 'MISS'}  (median of {len(r)} paired rounds, range "
            f"{r[0]:.3f}-{r[-1]:.3f}; pooled {t['pooled']:.3f})"
        )
        c = t["control"]
        print(
            f"          A/A control, two identical {first:,}-rule sidecars: median "
            f"{c['median']:.3f}, range {c['min']:.3f}-{c['max']:.3f}"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.1f} kB"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 s per config, 1 s warm-up")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--sizes", default="10,1000,10000", help="rule counts (ascending)")
    p.add_argument("--seconds", type=float, help="measured seconds per config (default 20)")
    p.add_argument("--rounds", type=int, help="interleaved rounds the seconds are split into")
    p.add_argument("--warmup", type=float, help="warm-up seconds per config (default 2)")
    p.add_argument("--connections", type=int, default=4, help="wrk connections (1 thread)")
    p.add_argument("--no-pin", action="store_true", help="let the OS place every process")
    args = p.parse_args(argv)
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.seconds = args.seconds or (3.0 if args.quick else 20.0)
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    # wrk -d takes whole seconds: each round lasts round(seconds / rounds) ≥ 1 s
    args.seconds = float(max(1, round(args.seconds / args.rounds)) * args.rounds)
    args.warmup = float(max(1, round(args.warmup)))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(f"bench_dataplane: needs the `wrk` load generator: {INSTALL_HINT}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started as `cmd &`
    layout = Layout.choose(pin=not args.no_pin)
    info = machine(layout)
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp:
        folder = Path(tmp)
        ids = mint_identities(folder)
        backend_port = free_port()
        configs, meshes = prepare(args.sizes, backend_port, ids)
        procs = Processes(folder)
        try:
            progress(f"starting {len(configs) + 2} Envoys ...")
            start(procs, configs, meshes[args.sizes[0]], ids, backend_port, layout)
            for c in configs:
                check_enforcement(c, ids, meshes[c.rules])
            progress("403 for an unnamed identity and 200 for the client on every config")
            backend_alone = Run()
            backend_alone.add(
                wrk(
                    f"http://127.0.0.1:{backend_port}/",
                    min(3.0, args.seconds),
                    args.connections,
                    folder,
                    layout.others,
                )
            )
            runs = measure(configs, args, folder, layout, procs)
        finally:
            procs.stop_all()
    info["load_avg_end"] = os.getloadavg()[0]
    rows = results(configs, runs)
    report = {
        "machine": info,
        "settings": {
            k: getattr(args, k) for k in ("sizes", "seconds", "rounds", "warmup", "connections")
        },
        "backend_alone": backend_alone.summary(),
        "results": rows,
        "targets": verdicts(rows, runs),
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
