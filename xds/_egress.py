"""Egress at the source sidecar, for mesh traffic through its `upstreams`.

Egress rules are L4 and a mesh destination is matched by its identity only, so the source's
egress decision for each endpoint of an upstream is known when resources are built: the cluster
keeps only the endpoints egress allows and its upstream TLS accepts only their identities; an
upstream egress denies entirely gets a network RBAC filter that closes every connection, its
action named after the deciding policy rule (`ns/name#index`) or the default (`default:deny`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshwarden.engine import CompiledMesh, Decision, Flow, Workload, decide_egress
from meshwarden.xds._envoy import extension
from meshwarden.xds._predicates import TRUE
from meshwarden.xds._rbac import action

EGRESS_STAT_PREFIX = "meshwarden_egress_"


@dataclass(frozen=True, slots=True)
class UpstreamEgress:
    """What the source's egress makes of one upstream: the endpoints it may reach, and the
    cause that closes the upstream when it may reach none of them (None otherwise)."""

    allowed: tuple[Workload, ...]
    denied_by: str | None


def cause_of(decision: Decision) -> str:
    """`ns/name#index` for a rule, else the default's cause."""
    if decision.rule is None:
        return str(decision.policy)
    return f"{decision.policy}#{decision.rule}"


def upstream_egress(
    mesh: CompiledMesh, source: Workload, port: int, serving: Sequence[Workload]
) -> UpstreamEgress:
    plan = mesh.egress_plan(source.ref)
    allowed, causes = [], []
    for workload in serving:
        flow = Flow.build(
            source.ref,
            port,
            "tcp",
            destination=workload.ref,
            identity=workload.identity,
            address=workload.addresses[0] if workload.addresses else None,
        )
        decision = decide_egress(plan, flow)
        if decision.allowed:
            allowed.append(workload)
        else:
            causes.append(cause_of(decision))
    denied_by = causes[0] if causes and not allowed else None
    return UpstreamEgress(tuple(allowed), denied_by)


def egress_deny_filter(cause: str) -> dict[str, Any]:
    """A network RBAC filter that closes every connection, its action named `cause`."""
    matcher = {"matcherList": {"matchers": [{"predicate": TRUE, "onMatch": action(cause, "DENY")}]}}
    rbac = "envoy.extensions.filters.network.rbac.v3.RBAC"
    return extension(
        "envoy.filters.network.rbac", rbac, statPrefix=EGRESS_STAT_PREFIX, matcher=matcher
    )
