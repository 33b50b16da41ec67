"""The web console's flags (`server`, `up`, `demo`) and the explain it answers with — the code
of `meshwarden explain`, handed to the control plane (which may not import the CLI)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshwarden.cli._common import InputError, fail
from meshwarden.cli._types import host_port

if TYPE_CHECKING:  # not at import: `--help` stays fast
    from meshwarden.cli._explain import RequestFields
    from meshwarden.engine import CompiledMesh

UI_HELP = (
    "serve the read-only web console at http://HOST:PORT/ (the live graph, explain, policies; "
    "docs/console.md); loopback only unless --ui-allow-remote; port 0 picks a free one"
)
PARAMS = {
    "to": "to",
    "port": "port",
    "from_id": "from",
    "from_workload": "fromWorkload",
    "source_ip": "sourceIp",
    "method": "method",
    "path": "path",
    "host": "host",
    "headers": "headers",
    "jwt_claims": "jwtClaims",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("web console")
    group.add_argument("--ui", type=host_port, metavar="HOST:PORT", help=UI_HELP)
    group.add_argument(
        "--ui-allow-remote",
        action="store_true",
        help="let --ui bind a non-loopback address: anyone who reaches it sees "
        "the mesh's workloads, flows and policies (no secrets)",
    )
    group.add_argument(
        "--ui-trace-url",
        metavar="TEMPLATE",
        help="link each flow's trace to your trace UI, {traceId} replaced, e.g. "
        "http://127.0.0.1:16686/trace/{traceId} (Jaeger)",
    )


def options(args: argparse.Namespace) -> Any:
    """The ConsoleOptions the flags ask for (None: no console); a bad flag is an input error."""
    if args.ui is None:
        if args.ui_allow_remote or args.ui_trace_url:
            fail("--ui-allow-remote and --ui-trace-url go with --ui HOST:PORT")
        return None
    from meshwarden._console import ConsoleOptions

    chosen = ConsoleOptions(
        args.ui, args.ui_allow_remote, args.ui_trace_url, explain_json, diff_json
    )
    problem = chosen.problem()
    if problem:
        fail(problem)
    return chosen


def _fields(params: Mapping[str, str]) -> RequestFields:
    from meshwarden.cli._explain import RequestFields

    if not params.get("to") or not params.get("port"):
        raise InputError("to (NS/NAME) and port are required")
    if params.get("from") and params.get("fromWorkload"):
        raise InputError("give from or fromWorkload, not both")
    try:
        port = int(params["port"])
        claims = json.loads(params["jwtClaims"]) if params.get("jwtClaims") else None
    except ValueError as exc:
        raise InputError(f"port must be a number and jwtClaims JSON ({exc})") from None
    if claims is not None and (not isinstance(claims, dict) or "iss" not in claims):
        raise InputError('jwtClaims must be a JSON object with an "iss" claim')
    headers: dict[str, str] = {}
    for line in filter(str.strip, params.get("headers", "").splitlines()):
        name, eq, value = line.partition("=")
        if not eq or not name.strip():
            raise InputError(f"headers: {line!r}: write NAME=VALUE, one a line")
        key = name.strip().lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return RequestFields(
        params["to"],
        port,
        params.get("from") or None,
        params.get("fromWorkload") or None,
        params.get("sourceIp") or None,
        params.get("method") or None,
        params.get("path") or None,
        params.get("host") or None,
        headers,
        claims,
    )


def explain_json(mesh: CompiledMesh, params: Mapping[str, str]) -> dict[str, Any]:
    """`meshwarden explain -o json` for the request in `params` (the console's names: to, port,
    from, fromWorkload, sourceIp, method, path, host, headers, jwtClaims). ValueError for bad
    input, naming the parameter."""
    from meshwarden.cli._explain import request_from
    from meshwarden.cli._explain_path import path_json, request_path

    try:
        request = request_from(_fields(params), mesh, lambda name: PARAMS[name])
    except InputError as exc:
        raise ValueError(str(exc)) from None
    return path_json(request_path(mesh, request, params.get("fromWorkload") or None))


def diff_json(before: dict[str, bytes], after: dict[str, bytes]) -> dict[str, Any]:
    """`meshwarden diff -o json`'s changes between two revisions' files; ValueError when one
    does not compile."""
    from meshwarden.cli._store_diff import compare

    try:
        return compare(before, after)
    except InputError as exc:
        raise ValueError(str(exc)) from None
