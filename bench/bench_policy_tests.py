"""`meshwarden test` throughput: policy test cases decided per second (issue #13 asks >= 10,000/s).

    .venv/bin/python bench/bench_policy_tests.py          # 200 workloads, 1,000 policies, 20k cases
    .venv/bin/python bench/bench_policy_tests.py --quick  # 50 workloads, 100 policies, 5,000 cases
    .venv/bin/python bench/bench_policy_tests.py --json

Generates a mesh (one ALLOW policy per workload naming a few callers, plus path rules) and a
test file whose cases mix allowed and denied requests with their true expectations (computed
from the generator's own bookkeeping, not by the engine), writes both to a temporary directory,
then times, with the garbage collector paused as `meshwarden test` pauses it: reading the test
files (`read_cases`: YAML with positions), and deciding every case the way `meshwarden test`
does (`run_cases`: request building + `decide`). Every case must pass; a failing case is an
engine or generator bug and stops the run.

Baseline, in the same run: PyYAML's own C loader (`yaml.load_all` with `CSafeLoader`: no
positions, no limits, no checks; the collector paused too) on the same test files;
`read_vs_libyaml` is how many times as long reading with positions takes. Prints the machine
and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _harness import cpu_model
from meshwarden.engine import collection_paused, load

from meshwarden.cli._test import run_cases
from meshwarden.cli._test_cases import read_cases

TD = "bench.example.org"


def _mesh_yaml(
    workloads: int, policies: int, rng: random.Random
) -> tuple[list[str], dict[str, set[str]]]:
    docs = [
        f"apiVersion: meshwarden.io/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\n"
        f"spec: {{trustDomain: {TD}, defaultPolicy: deny}}\n"
    ]
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
    return docs, callers


def _policy_files(folder: Path, docs: list[str]) -> list[str]:
    """The documents over as many files as the per-file input limits need (at most 1,000
    documents and 100,000 values a file), as a user would split them: 500 a file."""
    names = []
    for n, first in enumerate(range(0, len(docs), 500)):
        name = folder / f"mesh-{n:03d}.yaml"
        name.write_text("---\n".join(docs[first : first + 500]))
        names.append(str(name))
    return names


def _tests_yaml(
    cases: int, workloads: int, callers: dict[str, set[str]], rng: random.Random
) -> list[str]:
    lines = []
    refs = [f"ns{w % 10}/w{w}" for w in range(workloads)]
    for n in range(cases):
        to, source = rng.choice(refs), rng.choice(refs)
        path = rng.choice(["/api/items", "/admin/x"])
        allowed = source in callers.get(to, set()) and path.startswith("/api/")
        lines.append(
            f"- name: case {n}\n  request: {{to: {to}, port: 8080, "
            f"fromWorkload: {source}, path: {path}}}\n"
            f"  expect: {{decision: {'ALLOW' if allowed else 'DENY'}}}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = machine()
    workloads, policies, cases = (50, 100, 5_000) if args.quick else (200, 1_000, 20_000)
    rng = random.Random(13)
    with tempfile.TemporaryDirectory() as tmp:
        docs, callers = _mesh_yaml(workloads, policies, rng)
        loaded = load(_policy_files(Path(tmp), docs))
        assert loaded.compiled is not None, loaded.diagnostics[:3]
        compiled = loaded.compiled
        cases_text = _tests_yaml(cases, workloads, callers, rng)
        tests = []  # 5,000 cases a file: under the per-file limit of 100,000 values
        for n, first in enumerate(range(0, cases, 5_000)):
            name = Path(tmp) / f"tests-{n:03d}.yaml"
            name.write_text("\n".join(["tests:", *cases_text[first : first + 5_000]]) + "\n")
            tests.append(str(name))
        baseline_s = libyaml_seconds(tests)
        with collection_paused():  # as `meshwarden test` runs
            found, problems = [], []
            start = time.perf_counter()
            for test_file in tests:
                file_cases, file_problems = read_cases(test_file)
                found += file_cases
                problems += file_problems
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
        "workloads": workloads,
        "policies": policies,
        "cases": cases,
        "read_cases_per_s": round(cases / read_s),
        "decide_cases_per_s": round(cases / run_s),
        "end_to_end_cases_per_s": round(cases / (read_s + run_s)),
        "target_cases_per_s": 10_000,
        "libyaml_load_cases_per_s": round(cases / baseline_s),
        "read_vs_libyaml": round(read_s / baseline_s, 2),
    }
    print_figures(figures, args.json, info)
    return 0


def libyaml_seconds(files: list[str]) -> float:
    """The baseline: PyYAML's C loader on the same files, fastest of three passes (the
    collector paused, as for the timed reading)."""
    texts = [Path(f).read_text(encoding="utf-8") for f in files]
    best = float("inf")
    for _ in range(3):
        with collection_paused():  # as for the timed reading
            start = time.perf_counter()
            for text in texts:
                list(yaml.load_all(text, Loader=yaml.CSafeLoader))
            best = min(best, time.perf_counter() - start)
    return best


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": round(os.getloadavg()[0], 2),
    }


def print_figures(
    figures: dict[str, Any], as_json: bool, info: dict[str, Any] | None = None
) -> None:
    """The figures with the machine they were measured on (its load average at the end)."""
    info = {**(info or machine()), "load_average_end": round(os.getloadavg()[0], 2)}
    if as_json:
        json.dump({"machine": info, **figures}, sys.stdout)
        print()
        return
    start, end = info["load_average"], info["load_average_end"]
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"load average {start} at start, {end} at end"
    )
    for key, value in figures.items():
        print(f"{key:>24}: {value:,}")


if __name__ == "__main__":
    sys.exit(main())
