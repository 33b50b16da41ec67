"""`meshwarden explain` for a path: egress at the source and ingress at the destination, and
egress to an address outside the mesh (`--to-ip`)."""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from meshwarden.cli._common import InputError
from meshwarden.engine import (
    Action,
    CompiledMesh,
    Decision,
    Flow,
    PathDecision,
    Request,
    decide,
    decide_egress,
    decide_outbound,
)


def request_path(mesh: CompiledMesh, request: Request, source: str | None) -> PathDecision:
    """Ingress for `request`; with a `source` workload, also its egress to the destination."""
    ingress = decide(mesh.plan(request.destination), request, explain=True)
    if source is None:
        return PathDecision(None, ingress)
    destination = mesh.registry.workloads[request.destination]
    flow = Flow.build(
        source,
        request.port,
        request.protocol,
        destination=destination.ref,
        identity=destination.identity,
        address=destination.addresses[0] if destination.addresses else None,
    )
    return PathDecision(decide_egress(mesh.egress_plan(source), flow, explain=True), ingress)


def outbound_path(args: argparse.Namespace, mesh: CompiledMesh) -> PathDecision:
    """Egress from `--from-workload` to `--to-ip` (an address outside the mesh)."""
    if not args.from_workload:
        raise InputError("--to-ip needs --from-workload: egress is decided at a mesh workload")
    given = [f for f in ("source_ip", "method", "path", "host", "jwt_claims") if getattr(args, f)]
    if given or args.header:
        names = [f"--{f.replace('_', '-')}" for f in given] + (["--header"] if args.header else [])
        raise InputError(f"{', '.join(names)}: egress to --to-ip is decided on L4 only")
    try:
        address = ipaddress.ip_address(args.to_ip)
    except ValueError:
        raise InputError(f"--to-ip {args.to_ip!r} is not an IP address") from None
    if args.from_workload not in mesh.registry.workloads:
        raise InputError(f"--from-workload {args.from_workload}: no such workload")
    try:
        return decide_outbound(
            mesh, args.from_workload, address, args.port, args.protocol, explain=True
        )
    except ValueError as exc:
        raise InputError(f"--to-ip {address}: {exc}; use --to with that workload") from None


def path_json(path: PathDecision) -> dict[str, Any]:
    """explain's JSON: every key of the ingress decision (of the egress one for --to-ip), the
    top-level decision and cause being the path's, plus `direction` and `egress`."""
    first = path.ingress or path.egress
    assert first is not None
    deciding = path.deciding
    out = first.to_json()
    out.update(
        decision=Action.ALLOW if path.allowed else Action.DENY,
        policy=deciding.policy,
        rule=deciding.rule,
        reason=deciding.reason,
        direction=path.direction,
        egress=path.egress.to_json() if path.egress is not None else None,
    )
    return out


def render_egress(decision: Decision, source: str, target: str) -> list[str]:
    """The egress part of explain's text."""
    rule = f" rule {decision.rule}" if decision.rule is not None else ""
    lines = [
        f"egress at {source} -> {target}: {decision.verdict}  cause: {decision.policy}{rule}",
        f"  reason: {decision.reason}",
        f"egress policies selecting {source} ({len(decision.trace)}):",
    ]
    lines.extend(trace_lines(decision))
    for o in decision.dry_run:
        lines.append(f"egress dry-run: {o.policy} would {o.decision}")
    for o in decision.audit:
        lines.append(f"egress audit:   {o.policy} rule {o.rule} matched")
    return lines


def trace_lines(decision: Decision) -> list[str]:
    """One line per traced policy (+ matched, - not), then one per rule with its reason."""
    lines = []
    for t in decision.trace:
        mark = "+" if t.matched_rule is not None else "-"
        head = f"  {mark} {t.policy}  [{t.action}{', dry-run' if t.mode == 'dry-run' else ''}]"
        lines.append(head + (f"  {t.note}" if t.note else ""))
        for i, reason in enumerate(t.rule_reasons):
            lines.append(f"      rule {i}: " + ("MATCHED" if reason is None else reason))
    return lines
