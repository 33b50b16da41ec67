"""Differential run at scale: thousands of random policy sets × requests decided by the engine
(`explain`'s evaluator) and by a real Envoy running our translation; prints the counts.

    .venv/bin/python bench/bench_differential.py [--sets N]     # default 300 sets × 12 requests

It runs the same harness as tests/e2e/test_differential.py (which `make test` runs with 30
sets) with more sets, so any disagreement fails it the same way.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sets", type=int, default=300, help="random policy sets (12 requests each)"
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    env = dict(os.environ, MESHWARDEN_DIFFERENTIAL_SETS=str(args.sets))
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "e2e" / "test_differential.py"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [
        line for line in result.stdout.splitlines() if "differential:" in line or "differ" in line
    ]
    print("\n".join(lines) or result.stdout[-3000:])
    print(
        f"{'PASS' if result.returncode == 0 else 'FAIL'}: {args.sets * 12} cases in "
        f"{time.perf_counter() - started:.1f} s (Envoy startup included)"
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
