"""Would enforcing a dry-run policy have denied traffic that was allowed? (for `promote`)

Each allowed flow to a workload the policy selects is rebuilt as a Request (identity, address,
port, method, path; headers and token claims are not recorded, so rules needing them do not
match — the answer errs on refusing) and judged by the policy's own rules, as the spec's
semantics would once it is enforced: a DENY policy denies what one of its rules matches; an
ALLOW policy denies what neither its rules nor those of the other enforced ALLOW policies
selecting that workload match.

An egress policy is judged the same way on the allowed egress records of the sources it
selects (source workload, destination identity and port), against the other enforced egress
ALLOW policies of that source; ingress records say nothing about egress and are skipped (and
the other way round).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshwarden.engine._compiler import CompiledMesh
from meshwarden.engine._egress import EgressPolicy
from meshwarden.engine._egress_rules import Flow
from meshwarden.engine._plan import CompiledPolicy
from meshwarden.engine._request import Request
from meshwarden.engine._vocabulary import Action, Direction, Effect


def would_deny(
    mesh: CompiledMesh, policy: CompiledPolicy | EgressPolicy, flows: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The allowed flows that `policy`, enforced, would have denied."""
    if isinstance(policy, EgressPolicy):
        return _egress_would_deny(mesh, policy, flows)
    found = []
    for flow in flows:
        workload = flow.get("workload")
        if workload not in policy.targets or str(flow.get("decision")).lower() != Effect.ALLOW:
            continue
        if flow.get("direction") == Direction.EGRESS:
            continue  # the destination's ingress record of the same connection is the one
        request = _request(flow)
        if request is not None and _denies(mesh, policy, request):
            found.append(flow)
    return found


def _request(flow: Mapping[str, Any]) -> Request | None:
    http = flow.get("protocol") != "tcp"
    try:
        return Request.build(
            str(flow["workload"]),
            int(flow["port"]),
            identity=flow.get("sourceIdentity"),
            source_ip=flow.get("sourceIp"),
            method=flow.get("method") if http else None,
            path=flow.get("path") if http else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _denies(mesh: CompiledMesh, policy: CompiledPolicy, request: Request) -> bool:
    if policy.action == Action.DENY:
        return policy.first_match(request) is not None
    if policy.action != Action.ALLOW or policy.first_match(request) is not None:
        return False
    others = (mesh.policies[ref] for ref in mesh.by_workload.get(request.destination, ()))
    return not any(
        p.action == Action.ALLOW and not p.dry_run and p.first_match(request) is not None
        for p in others
    )


def _egress_would_deny(
    mesh: CompiledMesh, policy: EgressPolicy, flows: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The allowed egress records of the sources `policy` selects that it, enforced, would have
    denied (egress is decided at the source: ingress records say nothing about it)."""
    found = []
    for flow in flows:
        if flow.get("direction") != Direction.EGRESS:
            continue
        if flow.get("sourceWorkload") not in policy.targets:
            continue
        if str(flow.get("decision")).lower() != Effect.ALLOW:
            continue
        attempt = _egress_attempt(flow)
        if attempt is not None and _egress_denies(mesh, policy, attempt):
            found.append(flow)
    return found


def _egress_attempt(flow: Mapping[str, Any]) -> Flow | None:
    """The connection an egress record reports, to the destination it reached."""
    identity = flow.get("destinationIdentity")
    if not identity:
        return None
    try:
        return Flow.build(
            str(flow["sourceWorkload"]),
            int(flow["port"]),
            str(flow.get("protocol") or "tcp"),
            destination=str(flow["workload"]),
            identity=str(identity),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _egress_denies(mesh: CompiledMesh, policy: EgressPolicy, attempt: Flow) -> bool:
    def matched(p: EgressPolicy) -> bool:
        return any(rule.matches(attempt) for rule in p.rules)

    if policy.action == Action.DENY:
        return matched(policy)
    if policy.action != Action.ALLOW or matched(policy):
        return False
    return not any(
        p.action == Action.ALLOW and not p.dry_run and attempt.source in p.targets and matched(p)
        for p in mesh.egress_policies.values()
    )
