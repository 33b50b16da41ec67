"""What one node's packet filter must do, computed from the compiled mesh: the ports the mesh owns
on that node, each with the source networks that may open a connection to it.

The result is independent of the filter technology; every renderer formats the same
`NodeFilter`. Port entries are disjoint and sorted, so renderers can use them as keys of a map
(nftables) or emit them in any order (iptables) with the same meaning, and the same input always
gives the same output.

Kernel filtering never contradicts the authorization policy: a port is narrowed to address ranges
only when no request from outside those ranges could be allowed (`explain` would deny every one),
so it is never stricter than the sidecar, only earlier.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from meshwarden.engine import (
    EVERYWHERE,
    Action,
    AuthorizationPlan,
    CompiledMesh,
    CompiledRule,
    Effect,
    Host,
    collapse_networks,
    collection_paused,
    subtract_networks,
)
from meshwarden.render._egress import NodeEgress, node_egress
from meshwarden.render._packet import packet_sources

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_ONLY: tuple[IpNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class PortRule:
    """Connections to `protocol` ports `low`-`high` are accepted from `sources` only (empty:
    from this host's loopback only; EVERYWHERE: from anywhere). `origins` say why."""

    protocol: str
    low: int
    high: int
    sources: tuple[IpNetwork, ...]
    origins: tuple[str, ...]

    @property
    def is_open(self) -> bool:
        return self.sources == EVERYWHERE

    @property
    def ports(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True, slots=True)
class NodeFilter:
    """What one node's packet filter does: disjoint port rules, the Host (if any), the
    destinations closed for every other port, and what may leave (`egress`)."""

    node: str
    version: str
    ports: tuple[PortRule, ...]
    host: Host | None
    closed: tuple[IpNetwork, ...]  # destinations closed for every other port ((): none)
    egress: NodeEgress = field(default_factory=NodeEgress)

    def sources_of(self, rule: PortRule, version: int) -> tuple[IpNetwork, ...]:
        return tuple(n for n in rule.sources if n.version == version)


@dataclass(frozen=True, slots=True)
class _Claim:
    protocol: str
    low: int
    high: int
    sources: tuple[IpNetwork, ...]
    origin: str


def node_filter(mesh: CompiledMesh, node: str) -> NodeFilter:
    """The filter of `node`: its workloads' ports (pinned with `node:NAME` selectors) and the
    rules of its Host document, if there is one."""
    registry = mesh.registry
    claims: list[_Claim] = []
    for workload in registry.on_node(node):
        claims.extend(_workload_claims(mesh.plan(workload.ref)))
        claims.extend(_packet_claims(mesh, mesh.plan(workload.ref)))
    host = registry.hosts.get(node)
    closed: tuple[IpNetwork, ...] = ()
    if host is not None:
        claims.extend(
            _Claim(rule.protocol, low, high, rule.sources, rule.origin)
            for rule in host.rules
            for low, high in rule.ports
        )
        closed = collapse_networks(ipaddress.ip_network(a) for a in host.addresses) or EVERYWHERE
    with collection_paused():  # many short-lived values, no cycles: no collector walks
        egress = node_egress(mesh, node)
    return NodeFilter(node, mesh.version, _disjoint(claims), host, closed, egress)


def _workload_claims(plan: AuthorizationPlan) -> list[_Claim]:
    workload = plan.workload
    claims = []
    for number, port in sorted(workload.ports.items()):
        sources = sidecar_sources(plan, number)
        claims.append(_Claim("tcp", number, number, sources, f"{workload.ref} port {number}"))
        app = port.target_port
        if app is not None and app != number:
            origin = f"{workload.ref} app port {app} (behind its sidecar)"
            claims.append(_Claim("tcp", app, app, LOOPBACK_ONLY, origin))
    for upstream in workload.spec.upstreams:
        origin = f"{workload.ref} upstream {upstream.service} local port {upstream.local_port}"
        claims.append(_Claim("tcp", upstream.local_port, upstream.local_port, (), origin))
    return claims


def _packet_claims(mesh: CompiledMesh, plan: AuthorizationPlan) -> list[_Claim]:
    """The workload's udp and sctp ports: no sidecar, so the filter admits what the policies do
    (identities resolved to their workloads' addresses, see `packet_sources`)."""
    workload = plan.workload
    return [
        _Claim(
            protocol,
            number,
            number,
            packet_sources(mesh, plan, number, protocol),
            f"{workload.ref} {protocol} port {number} (no sidecar)",
        )
        for (protocol, number) in sorted(workload.packet_ports)
    ]


def sidecar_sources(plan: AuthorizationPlan, port: int) -> tuple[IpNetwork, ...]:
    """Source networks from which some request to `port` of the workload could be allowed.

    A peer with an identity may come from any address (IP rules never apply to it), so one
    ALLOW rule reachable by identities, or by any peer, opens the port to everywhere. Only when
    every ALLOW rule for the port is an IP-fallback rule (`ipBlocks`/`notIpBlocks`) is the port
    narrowed to those ranges; under STRICT mTLS such rules admit nobody."""
    if not plan.has_allow:
        return EVERYWHERE if Effect(plan.mesh.default_policy) is Effect.ALLOW else LOOPBACK_ONLY
    plaintext = not plan.mtls(port).strict
    networks: list[IpNetwork] = []
    for rule in _allow_rules(plan):
        if not _reaches_port(rule, port):
            continue
        if not rule.sources:
            return EVERYWHERE
        for source in rule.sources:
            if source.needs_identity and source.needs_plaintext:
                continue  # matches nobody (`check` warns)
            if not source.needs_plaintext:
                return EVERYWHERE
            if plaintext:
                networks.extend(
                    subtract_networks(source.ip_blocks or EVERYWHERE, source.not_ip_blocks or ())
                )
    return collapse_networks(networks)


def _allow_rules(plan: AuthorizationPlan) -> Iterable[CompiledRule]:
    for policy in plan.policies:
        if policy.action == Action.ALLOW and not policy.dry_run:
            yield from policy.rules


def _reaches_port(rule: CompiledRule, port: int) -> bool:
    if not rule.operations:
        return True
    return any(op.admits_port(port) for op in rule.operations)


def _disjoint(claims: list[_Claim]) -> tuple[PortRule, ...]:
    """Claims cut into disjoint port ranges; where claims overlap their sources are united,
    except that a loopback-only claim (an app port behind a sidecar) always wins."""
    rules: list[PortRule] = []
    for protocol in sorted({c.protocol for c in claims}):
        starts: dict[int, list[_Claim]] = defaultdict(list)
        ends: dict[int, list[_Claim]] = defaultdict(list)
        for claim in claims:
            if claim.protocol == protocol:
                starts[claim.low].append(claim)
                ends[claim.high + 1].append(claim)
        cuts = sorted(starts.keys() | ends.keys())
        active: dict[int, _Claim] = {}
        for cut, next_cut in pairwise(cuts):
            for claim in ends.get(cut, ()):
                del active[id(claim)]
            for claim in starts.get(cut, ()):
                active[id(claim)] = claim
            if active:
                rules.append(_merge(protocol, cut, next_cut - 1, list(active.values())))
    return tuple(_join_adjacent(rules))


def _merge(protocol: str, low: int, high: int, claims: list[_Claim]) -> PortRule:
    origins = tuple(sorted({c.origin for c in claims}))
    if any(c.sources == LOOPBACK_ONLY for c in claims):
        return PortRule(protocol, low, high, LOOPBACK_ONLY, origins)
    sources = collapse_networks(n for c in claims for n in c.sources)
    return PortRule(protocol, low, high, sources, origins)


def _join_adjacent(rules: list[PortRule]) -> list[PortRule]:
    joined: list[PortRule] = []
    for rule in rules:
        last = joined[-1] if joined else None
        if (
            last is not None
            and (last.protocol, last.high + 1, last.sources)
            == (rule.protocol, rule.low, rule.sources)
            and last.origins == rule.origins
        ):
            joined[-1] = PortRule(rule.protocol, last.low, rule.high, rule.sources, rule.origins)
        else:
            joined.append(rule)
    return joined
