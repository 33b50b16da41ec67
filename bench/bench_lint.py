"""`meshwarden lint` on 10,000 policies (issue #13 asks <= 5 s).

    .venv/bin/python bench/bench_lint.py           # 1,000 workloads, 10,000 policies
    .venv/bin/python bench/bench_lint.py --quick   # 200 workloads, 1,000 policies
    .venv/bin/python bench/bench_lint.py --json

Generates the mesh of bench_policy_tests (one ALLOW policy per workload per round, each naming
three callers) plus one policy with a namespace typo, then times `load` (read, check, compile:
what `meshwarden check` costs) and `lint` on the compiled mesh separately, in wall-clock time
and in this process's CPU time (which a busy machine does not inflate). Prints figures only.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from bench_policy_tests import _mesh_yaml, _policy_files, print_figures
from meshwarden.engine import lint, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workloads, policies = (200, 1_000) if args.quick else (1_000, 10_000)
    docs, _ = _mesh_yaml(workloads, policies, random.Random(13))
    docs.append("apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
                "metadata: {name: typo, namespace: ns1}\nspec:\n  rules:\n"
                "  - from: [{namespaces: [ns11]}]\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        files = _policy_files(Path(tmp), docs)  # 500 documents a file (the input limits)
        start, cpu = time.perf_counter(), time.process_time()
        result = load(files)
        load_s, load_cpu = time.perf_counter() - start, time.process_time() - cpu
    assert result.compiled is not None, result.errors[:3]
    start, cpu = time.perf_counter(), time.process_time()
    findings = lint(result.compiled)
    lint_s, lint_cpu = time.perf_counter() - start, time.process_time() - cpu
    assert any(f.code == "MW102" for f in findings), "the planted typo was not found"
    figures = {"workloads": workloads, "policies": policies + 1, "findings": len(findings),
               "load_check_compile_s": round(load_s, 2), "lint_s": round(lint_s, 2),
               "total_s": round(load_s + lint_s, 2), "load_cpu_s": round(load_cpu, 2),
               "lint_cpu_s": round(lint_cpu, 2), "total_cpu_s": round(load_cpu + lint_cpu, 2),
               "target_total_s": 5.0}  # fmt: skip
    print_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
