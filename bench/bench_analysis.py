"""Shadowed-rule analysis: indexed candidates vs a pairwise scan, and how it grows with rules.

    .venv/bin/python bench/bench_analysis.py           # 80 / 800 / 8,000 rules per shape
    .venv/bin/python bench/bench_analysis.py --quick   # 80 / 800
    .venv/bin/python bench/bench_analysis.py --json    # one JSON object for scripts

Each shape puts N rules (one per AuthorizationPolicy) on one workload, the worst case for the
analysis: every rule is a possible rival of every other. Every 10th rule repeats an earlier
one's source (or is narrower than it), so warnings are produced. For every shape and size it
times `check_documents` (what `meshwarden check` and a full reload run) and the shadow analysis
alone, and, up to --pairwise-max rules, a pairwise scan in rule order (what the analysis did
before it was indexed); the two must report exactly the same warnings or the run fails.
Prints figures only; the target is issue #9: 8,000 namespace rules analysed in <= 2 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml
from meshwarden.engine import (
    CompiledMesh,
    CompiledRule,
    InputLimits,
    check_documents,
    compile_documents,
    parse_text,
)
from meshwarden.engine._analysis import _shadowed
from meshwarden.engine._diagnostics import Diagnostic, warning
from meshwarden.engine._shadow import covers

TD = "bench.example.org"
API = "meshwarden.io/v1alpha1"
BIG = InputLimits(documents=100_000, nodes=10_000_000, file_bytes=1 << 30)


def rule_for(shape: str, i: int) -> dict[str, Any]:
    """Rule i of a shape; every 10th rule (i % 10 == 9) is shadowed by rule i - 9."""
    n = i - 9 if i % 10 == 9 else i
    if shape == "namespaces":
        return {"from": [{"namespaces": [f"ns-{n}"]}]}
    if shape == "identities":
        return {"from": [{"identities": [f"spiffe://{TD}/ns/shop/sa/caller-{n}"]}]}
    if shape == "paths":
        return {"from": [{"namespaces": ["shop"]}], "to": [{"paths": [f"/api/{n}/*"]}]}
    if shape == "headers":
        return {"when": [{"key": "request.headers[x-tenant]", "values": [f"tenant-{n}"]}]}
    if shape == "mixed":
        kind = n % 4
        if kind == 0:
            return rule_for("namespaces", i)
        if kind == 1:
            return rule_for("identities", i)
        if kind == 2:
            return rule_for("paths", i)
        return {"from": [{"identities": [f"spiffe://{TD}/ns/team-{n}/*"]}]}
    raise ValueError(shape)


SHAPES = ("namespaces", "identities", "paths", "headers", "mixed")


def mesh_text(shape: str, rules: int) -> str:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": API,
            "kind": "Mesh",
            "metadata": {"name": "m"},
            "spec": {"trustDomain": TD, "mtls": "STRICT"},
        },
        {
            "apiVersion": API,
            "kind": "Workload",
            "metadata": {"name": "backend-1", "namespace": "shop", "labels": {"app": "backend"}},
            "spec": {"addresses": ["127.0.0.3"], "ports": [{"port": 8080, "protocol": "http"}]},
        },
    ]
    for i in range(rules):
        docs.append(
            {
                "apiVersion": API,
                "kind": "AuthorizationPolicy",
                "metadata": {"name": f"p-{i:05d}", "namespace": "shop"},
                "spec": {
                    "selector": {"matchLabels": {"app": "backend"}},
                    "rules": [rule_for(shape, i)],
                },
            }
        )
    return yaml.dump_all(docs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))


def pairwise(mesh: CompiledMesh) -> list[Diagnostic]:
    """The definition, rule by rule: the first earlier rule of the same action (or any DENY rule
    for an ALLOW rule) whose policy selects at least the same workloads and that covers it."""
    enforced = sorted(
        (p for p in mesh.policies.values() if not p.dry_run and p.action != "AUDIT" and p.targets),
        key=lambda p: (p.namespace, p.name),
    )
    ranked = [((n, r.index), r, p) for n, p in enumerate(enforced) for r in p.rules]
    found = []
    for position, rule, policy in ranked:
        for rank, other, rival in ranked:
            same = rival.action == policy.action
            deny_first = rival.action == "DENY" and policy.action == "ALLOW"
            if other is rule or not ((same and rank < position) or deny_first):
                continue
            if rival.targets >= policy.targets and covers(other, rule):
                found.append(_warning(mesh, rule, policy.ref, other))
                break
    return found


def _warning(mesh: CompiledMesh, rule: CompiledRule, ref: str, shadow: CompiledRule) -> Diagnostic:
    deny = shadow.policy != ref and mesh.policies[shadow.policy].action == "DENY"
    verb = "denied" if deny else "already matched"
    return warning(
        rule.location,
        f"rule {rule.index} of {ref} is fully shadowed: every request "
        f"it matches is {verb} by rule {shadow.name} first",
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def run_shape(shape: str, sizes: list[int], pairwise_max: int) -> list[dict[str, Any]]:
    rows = []
    for rules in sizes:
        documents, problems = parse_text(mesh_text(shape, rules), f"{shape}.yaml", BIG)
        assert not problems, problems[:3]
        compiled = compile_documents(documents)
        check_s, (checked, found) = timed(lambda docs=documents: check_documents(docs))
        assert checked is not None, [str(d) for d in found if d.severity.value == "error"][:3]
        shadow_s, warnings = timed(lambda mesh=compiled: _shadowed(mesh))
        assert len(warnings) == rules // 10, (shape, rules, len(warnings))
        row: dict[str, Any] = {
            "shape": shape,
            "rules": rules,
            "check_s": check_s,
            "shadow_s": shadow_s,
            "warnings": len(warnings),
        }
        if rules <= pairwise_max:
            row["pairwise_s"], expected = timed(lambda mesh=compiled: pairwise(mesh))
            if sorted(map(str, expected)) != sorted(map(str, warnings)):
                raise SystemExit(f"{shape} x {rules}: indexed and pairwise analyses disagree")
        rows.append(row)
        print(
            f"  {shape:<11} {rules:>6,} rules: check {check_s:7.3f} s, shadow analysis "
            f"{shadow_s:7.3f} s"
            + (f", pairwise {row['pairwise_s']:7.3f} s" if "pairwise_s" in row else ""),
            file=sys.stderr,
        )
    return rows


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="80 and 800 rules only")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--pairwise-max", type=int, default=800, help="largest size also run pairwise (default 800)"
    )
    args = parser.parse_args()
    sizes = [80, 800] if args.quick else [80, 800, 8000]
    info = machine()
    print(f"machine: {info}", file=sys.stderr)
    rows = [row for shape in SHAPES for row in run_shape(shape, sizes, args.pairwise_max)]
    report = {"machine": {**info, "load_end": os.getloadavg()}, "results": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"\n{'shape':<11} {'rules':>6} {'check s':>8} {'shadow s':>9} {'pairwise s':>11} "
        f"{'pairwise/ours':>14} {'ours / ours(80)':>16}"
    )
    for row in rows:
        base = next(r for r in rows if r["shape"] == row["shape"] and r["rules"] == sizes[0])
        pair = row.get("pairwise_s")
        ratio = f"{pair / max(row['shadow_s'], 1e-6):13.1f}x" if pair is not None else " " * 14
        print(
            f"{row['shape']:<11} {row['rules']:>6,} {row['check_s']:8.3f} {row['shadow_s']:9.3f} "
            f"{pair if pair is not None else float('nan'):11.3f} {ratio} "
            f"{row['shadow_s'] / max(base['shadow_s'], 1e-6):15.1f}x"
        )
    big = [r for r in rows if r["shape"] == "namespaces" and r["rules"] == 8000]
    if big:
        verdict = "pass" if big[0]["check_s"] <= 2 else "MISS"
        print(
            f"\ntarget (issue #9): 8,000 namespace rules checked in <= 2 s: "
            f"{big[0]['check_s']:.2f} s CPU, {verdict}"
        )
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
