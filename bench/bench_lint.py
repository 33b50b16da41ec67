"""`meshwarden lint` on 10,000 policies (issue #13 asks <= 5 s).

    .venv/bin/python bench/bench_lint.py           # 1,000 workloads, 10,000 policies
    .venv/bin/python bench/bench_lint.py --quick   # 200 workloads, 1,000 policies
    .venv/bin/python bench/bench_lint.py --json

Generates the mesh of bench_policy_tests (one ALLOW policy per workload per round, each naming
three callers) plus one policy with a namespace typo, then times `load` (read, check, compile:
what `meshwarden check` costs) and `lint` on the compiled mesh separately, in wall-clock time
and in this process's CPU time (which a busy machine does not inflate), with the garbage
collector paused as those commands pause it; and, on its own,
reading and validating the files with positions (`read_files`: parse + validate, issue #14's
"loading 10,000 policies").

Baseline, in the same run: PyYAML's own C loader (`yaml.load_all` with `CSafeLoader`: no
positions, no limits, no validation) on the same files; `*_vs_libyaml` are how many times as
long as that each step takes. Prints the machine and the figures.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from bench_policy_tests import _mesh_yaml, _policy_files, libyaml_seconds, machine, print_figures
from meshwarden.engine import collection_paused, lint, load, read_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = machine()
    workloads, policies = (200, 1_000) if args.quick else (1_000, 10_000)
    docs, _ = _mesh_yaml(workloads, policies, random.Random(13))
    docs.append(
        "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: typo, namespace: ns1}\nspec:\n  rules:\n"
        "  - from: [{namespaces: [ns11]}]\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = _policy_files(Path(tmp), docs)  # 500 documents a file (the input limits)
        baseline_s = libyaml_seconds(files)
        with collection_paused():  # as `meshwarden check` and `lint` run
            start, cpu = time.perf_counter(), time.process_time()
            read_files(files)
            read_s, read_cpu = time.perf_counter() - start, time.process_time() - cpu
        with collection_paused():
            start, cpu = time.perf_counter(), time.process_time()
            result = load(files)
            load_s, load_cpu = time.perf_counter() - start, time.process_time() - cpu
            assert result.compiled is not None, result.errors[:3]
            start, cpu = time.perf_counter(), time.process_time()
            findings = lint(result.compiled)
            lint_s, lint_cpu = time.perf_counter() - start, time.process_time() - cpu
    assert any(f.code == "MW102" for f in findings), "the planted typo was not found"
    figures = {
        "workloads": workloads,
        "policies": policies + 1,
        "findings": len(findings),
        "parse_validate_s": round(read_s, 2),
        "parse_validate_cpu_s": round(read_cpu, 2),
        "target_parse_validate_s": 2.0,
        "load_check_compile_s": round(load_s, 2),
        "lint_s": round(lint_s, 2),
        "total_s": round(load_s + lint_s, 2),
        "load_cpu_s": round(load_cpu, 2),
        "lint_cpu_s": round(lint_cpu, 2),
        "total_cpu_s": round(load_cpu + lint_cpu, 2),
        "target_total_s": 5.0,
        "libyaml_load_s": round(baseline_s, 2),
        "parse_validate_vs_libyaml": round(read_s / baseline_s, 2),
        "total_vs_libyaml": round((load_s + lint_s) / baseline_s, 2),
    }
    print_figures(figures, args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
