"""`meshwarden verify --server URL`: real probes through the sidecars, compared with explain."""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from meshwarden.cli import _verify_probes as probes
from meshwarden.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    InputError,
    add_output_format,
    fail,
    load_or_raise,
    print_json,
)
from meshwarden.cli._types import http_server, positive_duration, split_host_port
from meshwarden.engine import CompiledMesh

HELP = """\
Check the live mesh: from every source workload, send a real request through its own sidecar
(its upstream listener on 127.0.0.1:localPort, so the request carries the source's SVID) to
each Service it reaches, and compare what the destination sidecar decided with what `explain`
decides for the same request — and with --expect, with what you expect. Prints a matrix
(source × destination, as npinger does) and every difference, naming the pair.

Run it on the host of `meshwarden up` (the upstream listeners are loopback). Policies: PATH,
or the directory the control plane reports. verify first waits (--wait) until the control
plane serves the version those files compile to and every sidecar applied it.

--expect MATRIX.yaml:
  expect:
  - {from: shop/frontend-1, to: shop/backend, port: 8080, method: GET, path: /api/catalogue,
     decision: ALLOW}
  - {from: ops/ops-1, to: shop/backend, port: 8080, decision: DENY}
Each entry is also a probe. Without --expect, each upstream gets one probe: GET / on http
ports, a connection on tcp ports. 403 is a deny; a tcp connection closed at once is a deny.

examples:
  meshwarden verify --server http://127.0.0.1:9901/healthz
  meshwarden verify --server 127.0.0.1:9901 --expect reachability.yaml -o json

exit status: 0 no difference, 1 a difference (or a probe failed), 2 usage or input error."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "verify",
        help="probe the live mesh through its sidecars and compare with explain",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="policy files or directories (default: the control plane's)",
    )
    p.add_argument(
        "--server",
        required=True,
        type=http_server,
        metavar="URL",
        help="the control plane's health URL (as `up` prints it, or HOST:PORT)",
    )
    p.add_argument(
        "--expect",
        type=Path,
        metavar="MATRIX.yaml",
        help="probes and the decision each must get (`expect: [{from, to, port, method, path, "
        "decision}]`, see docs/rollout.md); default: one probe per upstream, judged against "
        "explain only",
    )
    p.add_argument(
        "--wait",
        type=positive_duration,
        default="30s",
        metavar="DURATION",
        help="how long to wait for the sidecars to apply the policies",
    )
    add_output_format(p, help="text (a matrix and the differences) or one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        health = _health(args.server)
        paths = args.paths or [_policy_dir(health)]
        result = load_or_raise(paths)
        if result.compiled is None:
            raise InputError(
                f"the policies have {len(result.errors)} error(s); "
                "run `meshwarden check` for details"
            )
        mesh = result.compiled
        todo = _expected(mesh, args.expect) if args.expect else probes.default_probes(mesh)
        _wait_applied(args.server, mesh.version, args.wait)
    except InputError as exc:
        return fail(str(exc))
    outcomes = []
    for probe in todo:
        observed, detail = probes.send(mesh, probe)
        outcomes.append(probes.Outcome(probe, observed, detail, probes.explain(mesh, probe)))
    _report(outcomes, args.output)
    return EXIT_FAILED if any(o.problems for o in outcomes) else EXIT_OK


def _health(server: str) -> dict[str, Any]:
    return _get_json(server, "/healthz")


def _get_json(server: str, path: str) -> dict[str, Any]:
    host, port = split_host_port(server)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        found: dict[str, Any] = json.loads(conn.getresponse().read())
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CommandFailed(f"--server {server}: {reason}") from None
    finally:
        conn.close()
    return found


def _policy_dir(health: dict[str, Any]) -> str:
    directory = health.get("policies")
    if not directory:
        raise InputError("the control plane does not say where its policies are; give PATH")
    return str(directory)


def _wait_applied(server: str, version: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        health = _get_json(server, "/healthz")
        serving = health.get("policyVersion")
        lagging = [n for n, s in health.get("sidecars", {}).items() if not s.get("applied")]
        if serving == version and not lagging:
            return
        if time.monotonic() >= deadline:
            why = (
                f"it serves policy version {serving}, the files compile to {version}"
                if serving != version
                else f"sidecars not up to date: {', '.join(lagging)}"
            )
            raise InputError(f"the mesh has not applied these policies after {wait:g}s: {why}")
        time.sleep(0.3)


def _expected(mesh: CompiledMesh, path: Path) -> list[probes.Probe]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"--expect {path}: {exc}") from None
    items = data.get("expect") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InputError(f"--expect {path}: expected a mapping with an 'expect' list of entries")
    return [
        probes.expected_probe(mesh, item, f"{path}: expect[{n}]") for n, item in enumerate(items)
    ]


def _report(outcomes: list[probes.Outcome], output: str) -> None:
    differences = [o for o in outcomes if o.problems]
    if output == "json":
        print_json({"probes": [o.to_json() for o in outcomes], "differences": len(differences)})
        return
    print(matrix(outcomes))
    for outcome in differences:
        for problem in outcome.problems:
            print(f"DIFFERENCE {outcome.probe.pair} {outcome.probe.request}: {problem}")
    print(f"verify: {len(outcomes)} probe(s), {len(differences)} difference(s)", file=sys.stderr)


def matrix(outcomes: list[probes.Outcome]) -> str:
    """Sources down, destinations across; a cell is the observed decision (`!` on a
    difference), `.` where the source has no upstream to that destination."""
    sources = sorted({o.probe.source for o in outcomes})
    targets = sorted({f"{o.probe.service}:{o.probe.port}" for o in outcomes})
    cells: dict[tuple[str, str], set[str]] = {}
    for o in outcomes:
        key = (o.probe.source, f"{o.probe.service}:{o.probe.port}")
        cells.setdefault(key, set()).add(o.observed + ("!" if o.problems else ""))
    rows = [["FROM \\ TO", *targets]]
    for source in sources:
        rows.append([source, *(",".join(sorted(cells.get((source, t), {"."}))) for t in targets)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
