"""`meshwarden explain`: would this request be allowed, and why?"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from meshwarden.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    InputError,
    add_output_format,
    add_policy_paths,
    fail,
    load_or_raise,
    print_json,
)
from meshwarden.cli._explain_path import (
    outbound_path,
    path_json,
    render_egress,
    request_path,
    trace_lines,
)
from meshwarden.cli._types import port_number
from meshwarden.engine import (
    CompiledMesh,
    Decision,
    PathDecision,
    Request,
    SpiffeId,
    SpiffeIdError,
)

if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address

HELP = """\
Decide one request offline, exactly as the sidecar would, and explain it: every policy that
selects the destination workload, which rule matched or why each did not.

The peer is --from SPIFFE_ID (a verified mTLS identity), or --from-workload NS/NAME (that
workload's identity and its first address), or neither: a plaintext peer at --source-ip. On an
http/grpc port the request defaults to GET /.

With --from-workload the answer is the path's: the egress policies at the source AND the ingress
policies at the destination (the json adds "egress" and "direction", the side that decided).
--to-ip IP asks about egress from --from-workload to an address outside the mesh.

examples:
  meshwarden explain examples/shop --to shop/backend-1 --port 8080 \\
      --from-workload shop/frontend-1 --method GET --path /api/catalogue
  meshwarden explain examples/shop --to shop/backend-1 --port 8080 --source-ip 127.0.0.9 -o json
  meshwarden explain policies/ --to shop/backend-1 --port 8080 \\
      --from spiffe://example.org/ns/ops/sa/ops --jwt-claims '{"iss": "https://idp.example.com"}'
  meshwarden explain policies/ --from-workload shop/frontend-1 --to-ip 203.0.113.5 --port 443
  meshwarden explain policies/ --to shop/dns-1 --port 53 --protocol udp --from-workload shop/web-1

exit status: 0 allowed, 1 denied, 2 usage or input error (invalid policies, unknown workload
or port, malformed flag values) or an internal error - never 1, so a script reads 1 as denied."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("explain", help="decide and explain one request", description=HELP)
    add_policy_paths(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="NS/WORKLOAD", help="destination workload")
    target.add_argument(
        "--to-ip",
        metavar="IP",
        help="destination address outside the mesh (egress only; needs --from-workload)",
    )
    p.add_argument(
        "--port",
        required=True,
        type=port_number,
        metavar="N",
        help="destination port (the Workload's port, not its targetPort)",
    )
    p.add_argument(
        "--protocol",
        choices=("tcp", "udp", "sctp"),
        default="tcp",
        help="transport of the port (default: tcp; http and grpc ports are tcp)",
    )
    peer = p.add_mutually_exclusive_group()
    peer.add_argument(
        "--from",
        dest="from_id",
        metavar="SPIFFE_ID",
        help="the identity the peer proved with its SVID (default: none, a plaintext peer)",
    )
    peer.add_argument(
        "--from-workload",
        metavar="NS/WORKLOAD",
        help="the peer is this workload: its identity, and its first address as --source-ip",
    )
    p.add_argument(
        "--source-ip",
        metavar="IP",
        help="the direct peer's address (default: --from-workload's first address, else "
        "none); ipBlocks rules match it only for a plaintext peer",
    )
    p.add_argument("--method", help="HTTP method (default: GET on http ports)")
    p.add_argument(
        "--path", metavar="/PATH", help="HTTP path, normalised as Envoy does (default: /)"
    )
    p.add_argument("--host", help="HTTP host / :authority (default: none)")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="request header; repeat for more",
    )
    p.add_argument(
        "--jwt-claims",
        metavar="JSON",
        help="claims of a verified token; its iss selects the JwtIssuer",
    )
    add_output_format(p)
    p.add_argument(
        "--trace",
        action="store_true",
        help="also export the explanation as a span tree to an OTLP collector "
        "(--otlp-endpoint, else $OTEL_EXPORTER_OTLP_ENDPOINT); prints the trace id "
        "on stderr",
    )
    p.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="OTLP/gRPC collector for --trace, e.g. http://127.0.0.1:4317",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = load_or_raise(args.paths)
        if result.compiled is None:
            if args.output != "json":
                for diagnostic in result.errors:
                    print(diagnostic, file=sys.stderr)
            raise InputError(
                f"the policies have {len(result.errors)} error(s); "
                "run `meshwarden check` for details",
                diagnostics=[d.to_json() for d in result.errors],
            )
        if args.to_ip is not None:
            request, path = None, outbound_path(args, result.compiled)
        else:
            request = build_request(args, result.compiled)
            path = request_path(result.compiled, request, args.from_workload)
        endpoint = _trace_endpoint(args)
    except InputError as exc:
        return fail(str(exc))
    if args.output == "json":
        print_json(path_json(path))
    else:
        print(render_path(path, request, args.from_workload, args.to or args.to_ip))
    if endpoint is not None and request is not None and path.ingress is not None:
        decision = path.ingress
        from meshwarden._explain_trace import TraceExportError, export_explanation

        try:
            trace_id = export_explanation(
                decision, request, endpoint, path.egress, args.from_workload
            )
        except TraceExportError as exc:
            return fail(str(exc))
        print(f"trace {trace_id} exported to {endpoint}", file=sys.stderr)
    return EXIT_OK if path.allowed else EXIT_FAILED


def _trace_endpoint(args: argparse.Namespace) -> str | None:
    if args.trace and args.to_ip is not None:
        raise InputError("--trace explains a request to a workload; it cannot be used with --to-ip")
    if not args.trace:
        if args.otlp_endpoint:
            raise InputError("--otlp-endpoint is for --trace; add --trace to export the trace")
        return None
    from meshwarden._telemetry import TelemetryError, otlp_endpoint

    try:
        endpoint = otlp_endpoint(args.otlp_endpoint)
    except TelemetryError as exc:
        raise InputError(str(exc)) from None
    if endpoint is None:
        raise InputError(
            "--trace needs a collector: pass --otlp-endpoint URL "
            "or set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4317)"
        )
    return endpoint


@dataclass(frozen=True, slots=True)
class RequestFields:
    """A request as a user writes it (explain's flags, a `meshwarden test` case): workloads by
    NS/NAME, the peer by SPIFFE ID or workload, HTTP attributes only on http/grpc ports."""

    to: str
    port: int
    from_id: str | None = None
    from_workload: str | None = None
    source_ip: str | None = None
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    jwt_claims: dict[str, Any] | None = None
    protocol: str = "tcp"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-").replace("from-id", "from").replace("headers", "header")


def build_request(args: argparse.Namespace, mesh: CompiledMesh) -> Request:
    fields = RequestFields(
        args.to,
        args.port,
        args.from_id,
        args.from_workload,
        args.source_ip,
        args.method,
        args.path,
        args.host,
        _headers(args.header),
        _claims(args.jwt_claims),
        args.protocol,
    )
    return request_from(fields, mesh)


def request_from(
    fields: RequestFields, mesh: CompiledMesh, flag: Callable[[str], str] = _flag
) -> Request:
    """The engine's Request for `fields`; InputError names the offending field with `flag`."""
    workloads = mesh.registry.workloads
    destination = workloads.get(fields.to)
    if destination is None:
        raise InputError(f"{flag('to')} {fields.to}: no such workload{_few(workloads, fields.to)}")
    port = destination.port_for(fields.port, fields.protocol)
    if port is None:
        known = ", ".join(f"{p.port} ({p.protocol})" for p in destination.all_ports())
        raise InputError(
            f"{flag('port')} {fields.port}: port {fields.port}/{fields.protocol} not declared by "
            f"{fields.to} (its ports: {known or 'none'}); the workload has no such port, so "
            "nothing in the mesh reaches it there"
        )
    identity, source_ip = _peer(fields, mesh, flag)
    if not port.is_http:
        http = ("method", "path", "host", "headers", "jwt_claims")
        given = [flag(k) for k in http if getattr(fields, k)]
        if given:
            raise InputError(
                f"{', '.join(given)}: port {fields.port} of {fields.to} is tcp, "
                "which has no HTTP attributes"
            )
    try:
        return Request.build(
            fields.to,
            fields.port,
            identity=identity,
            source_ip=source_ip,
            method=(fields.method or "GET") if port.is_http else None,
            path=(fields.path or "/") if port.is_http else None,
            host=fields.host,
            headers=fields.headers,
            jwt_claims=fields.jwt_claims,
            protocol=fields.protocol,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _peer(
    fields: RequestFields, mesh: CompiledMesh, flag: Callable[[str], str]
) -> tuple[SpiffeId | None, IPv4Address | IPv6Address | str | None]:
    """The peer's identity and address; a workload's are taken as the registry parsed them."""
    source_ip: IPv4Address | IPv6Address | str | None = fields.source_ip
    identity: SpiffeId | None = None
    if fields.from_workload:
        peer = mesh.registry.workloads.get(fields.from_workload)
        if peer is None:
            raise InputError(
                f"{flag('from_workload')} {fields.from_workload}: no such workload"
                f"{_few(mesh.registry.workloads, fields.from_workload)}"
            )
        identity = peer.spiffe_id
        if source_ip is None and peer.addresses:
            source_ip = peer.addresses[0]
    elif fields.from_id:
        try:
            identity = SpiffeId.parse(fields.from_id)
        except SpiffeIdError as exc:
            raise InputError(f"{flag('from_id')}: {exc}") from None
    if isinstance(source_ip, str):
        import ipaddress

        try:
            ipaddress.ip_address(source_ip)
        except ValueError:
            raise InputError(f"{flag('source_ip')} {source_ip!r} is not an IP address") from None
    return identity, source_ip


def _headers(pairs: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.strip():
            raise InputError(f"--header {pair!r}: write NAME=VALUE")
        key = name.strip().lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


def _claims(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        claims = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--jwt-claims is not valid JSON: {exc.msg}") from None
    if not isinstance(claims, dict) or "iss" not in claims:
        raise InputError('--jwt-claims must be a JSON object with an "iss" claim')
    return claims


def _few(workloads: dict[str, Any], name: str) -> str:
    """`; did you mean 'shop/backend-1'? (known: ...)` after "no such workload"."""
    names = sorted(workloads)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    more = f", ... ({len(names)} in all)" if len(names) > 8 else ""
    return f"{hint} (known: {', '.join(names[:8])}{more})"


def render(decision: Decision, req: Request) -> str:
    peer = req.identity or f"plaintext peer {req.source_ip or '(unknown address)'}"
    what = f" {req.method} {req.path}" if req.method else ""
    lines = [
        f"{decision.verdict}  {peer} -> {req.destination}:{req.port}{what}",
        f"  cause:  {decision.policy}"
        + (f" rule {decision.rule}" if decision.rule is not None else ""),
        f"  reason: {decision.reason}",
        f"policies selecting {req.destination} ({len(decision.trace)}):",
    ]
    lines.extend(trace_lines(decision))
    for o in decision.dry_run:
        lines.append(
            f"dry-run: {o.policy} would {o.decision}"
            + (f" (rule {o.rule})" if o.rule is not None else "")
        )
    for o in decision.audit:
        lines.append(f"audit:   {o.policy} rule {o.rule} matched")
    return "\n".join(lines)


def render_path(path: PathDecision, req: Request | None, source: str | None, target: str) -> str:
    """explain's text for a path: the ingress answer (its first line and cause are the path's),
    then the egress at the `source` workload."""
    deciding = path.deciding
    lines: list[str] = []
    if path.ingress is not None and req is not None:
        shown = replace(
            path.ingress,
            allowed=path.allowed,
            policy=deciding.policy,
            rule=deciding.rule,
            reason=deciding.reason,
        )
        lines = render(shown, req).splitlines()
        if path.direction == "egress":
            lines[1] += "  (egress at the source)"
    if path.egress is not None and source is not None:
        if req is None:
            lines.append(f"{path.egress.verdict}  {source} -> {target} (outside the mesh)")
        lines.extend(render_egress(path.egress, source, target))
    return "\n".join(lines)
