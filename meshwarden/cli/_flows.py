"""`meshwarden flows`: the authorization decisions the sidecars reported to the control plane."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from meshwarden.cli._common import (
    EXIT_OK,
    CommandFailed,
    add_output_format,
    fail,
    print_json,
    printable,
)
from meshwarden.cli._types import (
    DURATION_EXAMPLES,
    duration,
    http_server,
    positive_int,
    split_host_port,
)

SERVER_ENV = "MESHWARDEN_SERVER"

HELP = f"""\
Show the control plane's flow log: the authorization decisions the sidecars reported (each
request on an HTTP port, each connection on a tcp port, each connection through an upstream),
oldest first. The log is bounded (`meshwarden server --flow-log-size`); the oldest records go
first.

Each record: time, source (SPIFFE ID, or IP for a plaintext peer), destination workload and
port (for an egress record whose upstream egress closed: its Service), method and path
(`egress tcp` for a connection decided by the source's sidecar, through one of its upstreams),
HTTP status, decision, the policy and rule that made it (or a default cause: default:deny,
default:allow, jwt:invalid), the dry-run outcome where a dry-run policy applies, and the W3C
trace id of the request's traceparent.

The server is the HOST:PORT of the health endpoint that `meshwarden up` and `meshwarden
server` print in their 'ready' line (the http://HOST:PORT/healthz URL itself works too), from
--server or ${SERVER_ENV}.

examples:
  meshwarden flows --server 127.0.0.1:41234 --denied --since 5m
  MESHWARDEN_SERVER=127.0.0.1:41234 meshwarden flows --workload shop/backend-1 -o json
  meshwarden flows --server http://127.0.0.1:41234/healthz --follow
  meshwarden flows --direction egress --workload shop/frontend-1 --denied

exit status: 0 ok, 1 the server could not be reached or refused the query, 2 usage error."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "flows",
        help="show the authorization decisions the sidecars reported",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--server",
        type=http_server,
        default=os.environ.get(SERVER_ENV),
        metavar="HOST:PORT",
        help=f"the control plane's health endpoint (default: ${SERVER_ENV})",
    )
    p.add_argument("--denied", action="store_true", help="only denied requests")
    p.add_argument(
        "--workload",
        metavar="NS/NAME",
        help="only records of this workload, as destination or (egress) as source",
    )
    p.add_argument(
        "--direction",
        choices=("ingress", "egress"),
        help="only decisions of the destination's sidecar (ingress) or of the source's (egress)"
        " (default: both)",
    )
    p.add_argument(
        "--since",
        type=duration,
        metavar="DURATION",
        help=f"only the last DURATION ({DURATION_EXAMPLES})",
    )
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the newest N records")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new records as they arrive (Ctrl-C stops)",
    )
    add_output_format(p, help="json: an array; with --follow one JSON object per line")
    p.set_defaults(func=run)


def _query(args: argparse.Namespace) -> dict[str, str]:
    params: dict[str, str] = {}
    if args.denied:
        params["denied"] = "1"
    if args.workload:
        if args.workload.count("/") != 1:
            raise ValueError(f"--workload {args.workload!r}: expected NS/NAME")
        params["workload"] = args.workload
    if args.direction:
        params["direction"] = args.direction
    if args.since is not None:
        params["since"] = str(args.since)
    if args.limit is not None:
        params["limit"] = str(args.limit)
    if args.follow:
        params["follow"] = "1"
    return params


def _connect(server: str, params: dict[str, str]) -> http.client.HTTPResponse:
    host, port = split_host_port(server)
    conn = http.client.HTTPConnection(host, port, timeout=None if params.get("follow") else 30)
    conn.request("GET", "/flows?" + urlencode(params))
    return conn.getresponse()


def run(args: argparse.Namespace) -> int:
    if not args.server:
        return fail(
            f"no server: give --server HOST:PORT (the health endpoint in the 'ready' "
            f"line of `meshwarden up` / `meshwarden server`) or set ${SERVER_ENV}"
        )
    try:
        response = _connect(args.server, _query(args))
    except ValueError as exc:
        return fail(str(exc))
    except OSError as exc:
        raise CommandFailed(f"{args.server}: {exc.strerror or exc}") from None
    if response.status != 200:
        body = response.read().decode(errors="replace")
        raise CommandFailed(f"{args.server}: {response.status} {body}")
    try:
        if args.follow:
            return _follow(response, args.output)
        flows = json.loads(response.read())["flows"]
    except KeyboardInterrupt:
        return EXIT_OK
    if args.output == "json":
        print_json(flows)
    else:
        print_table(flows)
    return EXIT_OK


def _follow(response: http.client.HTTPResponse, output: str) -> int:
    if output == "text":
        print(_row(_HEADER, _WIDTHS), flush=True)
    for flow in _records(response):
        line = json.dumps(flow) if output == "json" else _row(cells(flow), _WIDTHS)
        print(line, flush=True)
    raise CommandFailed("the server closed the stream")


def _records(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    while True:
        line = response.readline()
        if not line:
            return
        if line.strip():  # blank lines are heartbeats
            yield json.loads(line)


_HEADER = (
    "TIME",
    "SOURCE",
    "DESTINATION",
    "REQUEST",
    "STATUS",
    "DECISION",
    "POLICY",
    "DRY-RUN",
    "TRACE",
)
_WIDTHS = (23, 44, 24, 24, 6, 8, 28, 28, 32)


def cells(flow: dict[str, Any]) -> tuple[str, ...]:
    """The table cells of one record (as `GET /flows` returns it)."""
    request = "tcp" if flow["protocol"] == "tcp" else f"{flow['method']} {flow['path']}"
    if flow.get("direction") == "egress":
        request = f"egress {flow['protocol']}"  # decided by the source's sidecar
    policy = flow["policy"] + (f"#{flow['rule']}" if flow["rule"] is not None else "")
    dry = flow["dryRun"]
    values = (
        flow["time"].replace("T", " ").removesuffix("Z"),
        flow["source"],
        f"{flow['workload']}:{flow['port']}",
        request,
        str(flow["status"] or "-"),
        flow["decision"],
        policy,
        f"{dry['decision']} {dry['policy']}" if dry else "-",
        flow["traceId"] or "-",
    )
    return tuple(printable(str(value)) for value in values)


def _row(values: tuple[str, ...], widths: tuple[int, ...]) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()


def print_table(flows: list[dict[str, Any]]) -> None:
    rows = [cells(flow) for flow in flows]
    widths = tuple(max(len(r[i]) for r in [_HEADER, *rows]) for i in range(len(_HEADER)))
    for row in [_HEADER, *rows]:
        print(_row(row, widths))
    if not rows:
        print("(no matching records)", file=sys.stderr)
