"""`meshwarden status`: every sidecar's configuration state (SYNCED / STALE / NACK / PROBLEM)
as the control plane(s) see it, with Envoy's message for a NACK and when its SVID expires."""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import sys
from typing import Any

from meshwarden.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    add_output_format,
    fail,
    print_json,
    printable,
)
from meshwarden.cli._types import http_server, split_host_port

SERVER_ENV = "MESHWARDEN_SERVER"
_RANK = {"SYNCED": 0, "STALE": 1, "NACK": 2, "PROBLEM": 3}

HELP = f"""\
Show, per sidecar, whether it runs the configuration the control plane serves:

  SYNCED  its ADS stream is open and it ACKed the current version of every resource type
  STALE   no ADS stream is open, or a version was not sent or not ACKed yet (the reason says)
  NACK    Envoy rejected a version (its message is shown); it keeps serving the last version
          it accepted, until it ACKs a newer one
  PROBLEM it cannot serve as configured (the reason says): under `up` its Envoy exited or has
          no identity; a sidecar bootstrapped without --ext-authz-port while the Mesh
          asks for extAuthz.transport http

and when the SVID it holds expires. Works the same for `meshwarden server` (a policy directory
or a store) and `meshwarden up`.

The server is the HOST:PORT of the health endpoint printed in the 'ready' line of `meshwarden
up` / `meshwarden server` (the http://HOST:PORT/healthz URL works too), from --server or
${SERVER_ENV}. With replicas give each one, comma-separated: every sidecar is reported by the
replica it is connected to.

examples:
  meshwarden status --server 127.0.0.1:41234
  meshwarden status --server cp1:9090,cp2:9090,cp3:9090 -o json

exit status: 0 no sidecar NACKed or has a problem, 1 some sidecar NACKed or has a problem, or
a server could not be asked, 2 usage error."""


def _servers(text: str) -> list[str]:
    """An argparse type: one or more health endpoints, comma-separated."""
    return [http_server(part.strip()) for part in text.split(",") if part.strip()]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "status",
        help="show every sidecar's configuration state: SYNCED, STALE, NACK or PROBLEM",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--server",
        type=_servers,
        default=os.environ.get(SERVER_ENV),
        metavar="HOST:PORT[,HOST:PORT...]",
        help=f"the control plane's health endpoint(s) (default: ${SERVER_ENV})",
    )
    p.add_argument("--workload", metavar="NS/NAME", help="only this workload's sidecar")
    add_output_format(p, help="json: {servers, sidecars, counts}, see docs/cli.md (default text)")
    p.set_defaults(func=run)


def fetch(server: str) -> dict[str, Any]:
    """`GET /healthz` of one control plane; OSError or ValueError with the reason."""
    host, port = split_host_port(server)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise ValueError(f"{response.status} {body.decode(errors='replace')[:200]}")
    report: dict[str, Any] = json.loads(body)
    return report


def _better(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Of two replicas' views of one sidecar: the one it is connected to, then the worst."""
    key_a = (a["streams"] > 0, _RANK[a["state"]])
    key_b = (b["streams"] > 0, _RANK[b["state"]])
    return b if key_b > key_a else a


def _newer(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return max(a, b, key=dt.datetime.fromisoformat)


def merge(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per workload from the health reports of every replica asked: the view of the
    replica it is connected to, and the newest SVID expiry any replica knows (agents renew
    through any replica)."""
    chosen: dict[str, dict[str, Any]] = {}
    expiry: dict[str, str | None] = {}
    for report in reports.values():
        problems: dict[str, str] = report.get("sidecarProblems", {})
        views = report.get("sidecars", {})
        for workload in problems.keys() - views.keys():  # e.g. under `up`: its Envoy exited
            views = {**views, workload: {"state": "STALE", "reason": "", "streams": 0}}
        for workload, view in views.items():
            row = {"workload": workload, "replica": view.get("replica", ""), **view}
            if workload in problems:
                row |= {"state": "PROBLEM", "reason": problems[workload]}
            chosen[workload] = _better(chosen[workload], row) if workload in chosen else row
            seen = (view.get("svid") or {}).get("expiry")
            expiry[workload] = _newer(expiry.get(workload), seen)
    return [{**chosen[w], "svidExpiry": expiry[w]} for w in sorted(chosen)]


def _expiry(text: str | None, now: dt.datetime) -> str:
    if not text:
        return "-"
    left = dt.datetime.fromisoformat(text) - now
    seconds = int(left.total_seconds())
    span = f"{abs(seconds) // 3600}h{abs(seconds) % 3600 // 60:02d}m"
    return f"{text} (in {span})" if seconds >= 0 else f"{text} (EXPIRED {span} ago)"


def _table(rows: list[dict[str, Any]], now: dt.datetime) -> list[str]:
    header = ("WORKLOAD", "STATE", "REPLICA", "SVID EXPIRES", "MESSAGE")
    cells = [
        tuple(
            printable(str(value))  # a NACK's message is whatever the sidecar's stream sent
            for value in (
                r["workload"],
                r["state"],
                r["replica"] or "-",
                _expiry(r["svidExpiry"], now),
                r["reason"],
            )
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    return [
        "  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip()
        for c in [header, *cells]
    ]


def _ask_all(servers: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    reports: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for server in servers:
        try:
            reports[server] = fetch(server)
        except (OSError, ValueError) as exc:
            problems[server] = getattr(exc, "strerror", None) or str(exc)
    return reports, problems


def run(args: argparse.Namespace) -> int:
    if not args.server:
        return fail(
            f"no server: give --server HOST:PORT (the health endpoint in the 'ready' line of "
            f"`meshwarden up` / `meshwarden server`) or set ${SERVER_ENV}"
        )
    servers = args.server if isinstance(args.server, list) else _servers(args.server)
    reports, problems = _ask_all(servers)
    if not reports:  # nothing to show: no "0 PROBLEM" summary a script could take as good news
        raise CommandFailed("; ".join(f"{s}: {problem}" for s, problem in problems.items()))
    rows = merge(reports)
    if args.workload:
        rows = [r for r in rows if r["workload"] == args.workload]
    counts = {state: sum(r["state"] == state for r in rows) for state in _RANK}
    if args.output == "json":
        print_json(
            {
                "servers": [
                    {
                        "server": s,
                        "replica": reports[s].get("replica"),
                        "status": reports[s].get("status"),
                        "policyVersion": reports[s].get("policyVersion"),
                    }
                    for s in reports
                ]
                + [{"server": s, "error": problem} for s, problem in problems.items()],
                "sidecars": rows,
                "counts": counts,
            }
        )
    else:
        for line in _table(rows, dt.datetime.now(dt.UTC)):
            print(line)
        print(", ".join(f"{n} {state}" for state, n in counts.items()))
    for server, problem in problems.items():
        print(f"meshwarden status: error: {server}: {problem}", file=sys.stderr)
    return EXIT_FAILED if counts["NACK"] or counts["PROBLEM"] or problems else EXIT_OK
