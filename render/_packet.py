"""UDP and SCTP ports of a workload: no sidecar carries them, so the packet filter is their only
enforcement, and it knows packets by address (docs/security.md, "UDP, SCTP and egress outside
the sidecars").

A workload's address is decided as that workload: the evaluator decides a request from its
identity and address on the port (conditions included), exactly as `explain --from-workload
... --protocol udp` does. Addresses outside the mesh are plaintext peers: none under STRICT
mTLS; under PERMISSIVE the `ipBlocks` of the enforced ALLOW rules reaching the port (a rule
with `when` conditions is left out) minus those of the DENY rules reaching it (conditions
ignored), so every approximation is narrower than the policy, never wider.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from meshwarden.engine import (
    EVERYWHERE,
    Action,
    AuthorizationPlan,
    CompiledMesh,
    CompiledRule,
    Effect,
    Peers,
    Request,
    collapse_networks,
    decide,
    subtract_networks,
)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def packet_sources(
    mesh: CompiledMesh, plan: AuthorizationPlan, port: int, protocol: str
) -> tuple[IpNetwork, ...]:
    """The source networks the filter admits to `protocol` port `port` of the plan's workload."""
    members: list[IpNetwork] = []
    allowed: list[IpNetwork] = []
    for workload in mesh.registry.workloads.values():
        for address in workload.addresses:
            network = ipaddress.ip_network(address)
            members.append(network)
            request = Request.build(
                plan.workload.ref,
                port,
                identity=workload.spiffe_id,
                source_ip=address,
                protocol=protocol,
            )
            if decide(plan, request).allowed:
                allowed.append(network)
    outside = subtract_networks(_plaintext(plan, port, protocol), members)
    return collapse_networks([*outside, *allowed])


def _reaches(rule: CompiledRule, port: int, protocol: str) -> bool:
    return not rule.operations or any(op.admits_port(port, protocol) for op in rule.operations)


def _rules(plan: AuthorizationPlan, action: Action) -> Iterable[CompiledRule]:
    for policy in plan.policies:
        if policy.action == action and not policy.dry_run:
            yield from policy.rules


def _plaintext(plan: AuthorizationPlan, port: int, protocol: str) -> list[IpNetwork]:
    """Networks of peers without an identity that some request from could be allowed."""
    if plan.mtls(port).strict:
        return []
    if not plan.has_allow:
        opened = list(EVERYWHERE) if Effect(plan.mesh.default_policy) is Effect.ALLOW else []
    else:
        opened = []
        for rule in _rules(plan, Action.ALLOW):
            if _reaches(rule, port, protocol) and not rule.conditions:
                opened += _admitted(rule)
    denied = [
        n for r in _rules(plan, Action.DENY) if _reaches(r, port, protocol) for n in _admitted(r)
    ]
    return subtract_networks(collapse_networks(opened), denied)


def _admitted(rule: CompiledRule) -> list[IpNetwork]:
    """The plaintext networks a rule's sources can match."""
    if not rule.sources:
        return list(EVERYWHERE)
    found: list[IpNetwork] = []
    for source in rule.sources:
        if source.peers in (Peers.IDENTIFIED, Peers.NONE):
            continue
        found += subtract_networks(source.ip_blocks or EVERYWHERE, source.not_ip_blocks or ())
    return found
