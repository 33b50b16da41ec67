"""`meshwarden test` throughput: policy test cases decided per second (issue #13 asks >= 10,000/s).

    .venv/bin/python bench/bench_policy_tests.py          # 200 workloads, 1,000 policies, 20k cases
    .venv/bin/python bench/bench_policy_tests.py --quick  # 50 workloads, 100 policies, 5,000 cases
    .venv/bin/python bench/bench_policy_tests.py --json

Generates a mesh (one ALLOW policy per workload naming a few callers, plus path rules) and a
test file whose cases mix allowed and denied requests with their true expectations (computed
from the generator's own bookkeeping, not by the engine), writes both to a temporary directory,
then times: reading the test file (YAML with positions), and deciding every case the way
`meshwarden test` does (`run_cases`: request building + `decide`). Every case must pass; a
failing case is an engine or generator bug and stops the run. Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from meshwarden.engine import load

from meshwarden.cli._test import run_cases
from meshwarden.cli._test_cases import read_cases

TD = "bench.example.org"


def _mesh_yaml(
    workloads: int, policies: int, rng: random.Random
) -> tuple[str, dict[str, set[str]]]:
    docs = [f"apiVersion: meshwarden.io/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\n"
            f"spec: {{trustDomain: {TD}, defaultPolicy: deny}}\n"]  # fmt: skip
    for w in range(workloads):
        docs.append(
            f"apiVersion: meshwarden.io/v1alpha1\nkind: Workload\n"
            f"metadata: {{name: w{w}, namespace: ns{w % 10}, labels: {{app: w{w}}}}}\n"
            f"spec: {{addresses: [127.1.{w // 250}.{w % 250 + 1}], "
            f"ports: [{{port: 8080, protocol: http}}]}}\n"
        )
    callers: dict[str, set[str]] = {}
    for p in range(policies):
        w = p % workloads
        chosen = {rng.randrange(workloads) for _ in range(3)}
        ids = ", ".join(f"spiffe://{TD}/ns/ns{c % 10}/sa/w{c}" for c in sorted(chosen))
        callers.setdefault(f"ns{w % 10}/w{w}", set()).update(f"ns{c % 10}/w{c}" for c in chosen)
        docs.append(
            f"apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: p{p}, namespace: ns{w % 10}}}\n"
            f"spec:\n  selector: {{matchLabels: {{app: w{w}}}}}\n  rules:\n"
            f"  - from: [{{identities: [{ids}]}}]\n    to: [{{paths: [/api/*]}}]\n"
        )
    return "---\n".join(docs), callers


def _tests_yaml(cases: int, workloads: int, callers: dict[str, set[str]],
                rng: random.Random) -> str:  # fmt: skip
    lines = ["tests:"]
    refs = [f"ns{w % 10}/w{w}" for w in range(workloads)]
    for n in range(cases):
        to, source = rng.choice(refs), rng.choice(refs)
        path = rng.choice(["/api/items", "/admin/x"])
        allowed = source in callers.get(to, set()) and path.startswith("/api/")
        lines.append(f"- name: case {n}\n  request: {{to: {to}, port: 8080, "
                     f"fromWorkload: {source}, path: {path}}}\n"
                     f"  expect: {{decision: {'ALLOW' if allowed else 'DENY'}}}")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workloads, policies, cases = (50, 100, 5_000) if args.quick else (200, 1_000, 20_000)
    rng = random.Random(13)
    with tempfile.TemporaryDirectory() as tmp:
        mesh_text, callers = _mesh_yaml(workloads, policies, rng)
        (Path(tmp) / "mesh.yaml").write_text(mesh_text)
        tests = Path(tmp) / "tests.yaml"
        tests.write_text(_tests_yaml(cases, workloads, callers, rng))
        compiled = load([str(Path(tmp) / "mesh.yaml")]).compiled
        assert compiled is not None
        start = time.perf_counter()
        found, problems = read_cases(str(tests))
        read_s = time.perf_counter() - start
        assert not problems, problems[:3]
        start = time.perf_counter()
        results = run_cases(found, compiled, problems)
        run_s = time.perf_counter() - start
    failed = [r for r in results if not r.passed]
    if failed or problems:
        print(f"FAIL: {failed[0].case.name}: {failed[0].problem}" if failed else problems[0])
        return 1
    figures = {
        "workloads": workloads, "policies": policies, "cases": cases,
        "read_cases_per_s": round(cases / read_s), "decide_cases_per_s": round(cases / run_s),
        "end_to_end_cases_per_s": round(cases / (read_s + run_s)),
        "target_cases_per_s": 10_000,
    }  # fmt: skip
    print_figures(figures, args.json)
    return 0


def print_figures(figures: dict[str, int | float], as_json: bool) -> None:
    if as_json:
        json.dump(figures, sys.stdout)
        print()
        return
    for key, value in figures.items():
        print(f"{key:>24}: {value:,}")


if __name__ == "__main__":
    sys.exit(main())
