"""Egress outside the sidecars, as one node's packet filter must hold it back (docs/hosts.md,
"Egress"; docs/security.md, "UDP, SCTP and egress outside the sidecars").

Who sends a packet is known to the kernel by the socket's uid (the node's own processes, keyed
with the workload's `unix:uid:N` selectors) or by the source address (workloads routed through
the node: containers behind a bridge). Each such source may send tcp, udp and sctp exactly where
its egress policies allow, decided with the engine's `decide_egress` as `explain --from-workload
W --to-ip IP` (or `--to` a workload) decides: a mesh workload's address as that workload (its
identity), every other address by `ipBlocks`. Where one key stands for several workloads (a
shared uid or address) a packet must be allowed for all of them: narrower, never wider.

The Host's own traffic (every other socket) is filtered only under `defaultEgress: deny`: its
`egress` rules, plus tcp to the mesh workloads' sidecar ports (the sidecars' own mesh traffic,
whose identity the destination checks).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from meshwarden.engine import (
    CompiledEgressRule,
    CompiledMesh,
    EgressPlan,
    Flow,
    Host,
    Workload,
    decide_egress,
)
from meshwarden.render._space import (
    PORTS,
    PROTOCOLS,
    EgressEntry,
    IpAddress,
    IpNetwork,
    Opening,
    covers_everything,
    entries,
    network_cuts,
    opening,
    port_atoms,
)

UID_SELECTOR = "unix:uid:"
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class SourceEgress:
    """Where one source may send tcp, udp and sctp (`allowed`, disjoint); the rest is refused."""

    name: str  # "shop/web", "shop/a + shop/b" (a shared key), "Host web-1"
    allowed: tuple[EgressEntry, ...]


@dataclass(frozen=True, slots=True)
class NodeEgress:
    """Everything the node's filter does to outbound packets."""

    sources: tuple[SourceEgress, ...] = ()
    # socket uid / routed source address -> index in `sources` (None: may send anywhere)
    uids: tuple[tuple[int, int | None], ...] = ()
    addresses: tuple[tuple[IpAddress, int | None], ...] = ()
    host: SourceEgress | None = None  # the Host's own traffic, under `defaultEgress: deny`
    bypass: tuple[tuple[IpAddress, int], ...] = ()  # tcp app ports behind sidecars elsewhere
    unkeyed: tuple[str, ...] = ()  # workloads whose own sockets cannot be told apart

    @property
    def empty(self) -> bool:
        return not (self.sources or self.host or self.bypass)

    @property
    def bounded(self) -> bool:
        """Whether everything leaving the node is held back somewhere (the Host is closed and
        every keyed sender is filtered), so the union of what is allowed bounds it."""
        keyed = [*self.uids, *self.addresses]
        return self.host is not None and all(index is not None for _, index in keyed)


@dataclass(slots=True)
class _Builder:
    mesh: CompiledMesh
    members: dict[IpAddress, list[Workload]] = field(default_factory=lambda: defaultdict(list))
    sources: list[SourceEgress] = field(default_factory=list)
    allowed: dict[tuple[str, ...], tuple[EgressEntry, ...]] = field(default_factory=dict)
    by_plans: dict[tuple[object, ...], tuple[EgressEntry, ...]] = field(default_factory=dict)
    by_group: dict[tuple[str, ...], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for workload in self.mesh.registry.workloads.values():
            for address in workload.addresses:
                self.members[address].append(workload)

    def filtered(self, group: tuple[str, ...]) -> bool:
        """Whether these workloads may not send everywhere (so their packets are filtered)."""
        if group not in self.allowed:
            plans = [self.mesh.egress_plan(ref) for ref in group]
            # workloads selected by the same policies (under the same default) send alike
            key = tuple(
                (tuple(id(p) for p in plan.policies), plan.mesh.default_egress_policy)
                for plan in plans
            )
            if key not in self.by_plans:
                self.by_plans[key] = workload_entries(plans, self.members)
            self.allowed[group] = self.by_plans[key]
        return not covers_everything(self.allowed[group])

    def source(self, group: tuple[str, ...]) -> int | None:
        """The index of the source standing for these workloads (None: they may send
        anywhere, so nothing is filtered)."""
        if not self.filtered(group):
            return None
        if group not in self.by_group:
            self.by_group[group] = len(self.sources)
            self.sources.append(SourceEgress(" + ".join(group), self.allowed[group]))
        return self.by_group[group]


def node_egress(mesh: CompiledMesh, node: str) -> NodeEgress:
    """The outbound half of `node`'s filter."""
    registry = mesh.registry
    local = registry.on_node(node)
    host = registry.hosts.get(node)
    builder = _Builder(mesh)
    uids = _keyed(builder, _by_uid(local))
    host_addresses = set(host.addresses) if host is not None else set()
    routed = {a: refs for a, refs in _by_address(local).items() if a not in host_addresses}
    addresses = _keyed(builder, routed)
    keyed = {ref for group in [*_by_uid(local).values(), *routed.values()] for ref in group}
    unkeyed = tuple(w.ref for w in local if w.ref not in keyed and builder.filtered((w.ref,)))
    return NodeEgress(
        tuple(builder.sources),
        uids,
        addresses,
        _host_egress(host, builder.members) if host is not None else None,
        _bypass(mesh, node),
        unkeyed,
    )


def _keyed(
    builder: _Builder, groups: Mapping[K, tuple[str, ...]]
) -> tuple[tuple[K, int | None], ...]:
    ordered = sorted(groups.items(), key=lambda item: _order(item[0]))
    return tuple((key, builder.source(refs)) for key, refs in ordered)


def _order(key: object) -> tuple[int, int]:
    if isinstance(key, int):
        return (0, key)
    assert isinstance(key, ipaddress.IPv4Address | ipaddress.IPv6Address)
    return (key.version, int(key))


def workload_uids(workload: Workload) -> frozenset[int]:
    """The uids of a workload's `unix:uid:N` attestation selectors; never 0, which would hold
    every root process (the agent, sshd) to one workload's egress."""
    return frozenset(
        int(s.removeprefix(UID_SELECTOR))
        for s in workload.selectors
        if s.startswith(UID_SELECTOR) and s.removeprefix(UID_SELECTOR).isdigit()
    ) - {0}


def _by_uid(local: list[Workload]) -> dict[int, tuple[str, ...]]:
    found: dict[int, list[str]] = defaultdict(list)
    for workload in local:
        for uid in workload_uids(workload):
            found[uid].append(workload.ref)
    return {uid: tuple(sorted(refs)) for uid, refs in found.items()}


def _by_address(local: list[Workload]) -> dict[IpAddress, tuple[str, ...]]:
    found: dict[IpAddress, list[str]] = defaultdict(list)
    for workload in local:
        for address in workload.addresses:
            if not address.is_loopback:
                found[address].append(workload.ref)
    return {address: tuple(sorted(refs)) for address, refs in found.items()}


def workload_entries(
    plans: list[EgressPlan], members: dict[IpAddress, list[Workload]]
) -> tuple[EgressEntry, ...]:
    """Where sources with these egress plans may all send: every flow decided by
    `decide_egress`, once per atom of the destination space. Mesh workloads whose identities
    are matched by the same rules' destinations are decided once (the decision depends on the
    identity only through those matches)."""
    if all(not plan.policies for plan in plans):  # the Mesh default decides every flow
        everywhere = all(plan.mesh.default_egress_policy == "allow" for plan in plans)
        return entries([], lambda _: _ALL if everywhere else (), {})
    atoms = port_atoms(r for plan in plans for r in _port_ranges(plan))
    cuts = network_cuts(n for plan in plans for n in _networks(plan))
    rules = [rule for plan in plans for policy in plan.policies for rule in policy.rules]

    def decides(flows: Callable[[EgressPlan, str, int], Iterable[Flow]]) -> Opening:
        return opening(
            atoms,
            lambda protocol, port: all(
                decide_egress(plan, flow).allowed
                for plan in plans
                for flow in flows(plan, protocol, port)
            ),
        )

    def outside(address: IpAddress) -> Opening:
        return decides(lambda plan, protocol, port: [_flow(plan, port, protocol, address)])

    by_matches: dict[tuple[bool, ...], Opening] = {}
    own: dict[IpAddress, Opening] = {}
    for address, workloads in members.items():
        key = tuple(m for w in workloads for m in _to_matches(rules, w))
        if key not in by_matches:
            by_matches[key] = decides(_to_workloads(address, workloads))
        own[address] = by_matches[key]
    return entries(cuts, outside, own)


_ALL: Opening = tuple((protocol, *PORTS) for protocol in PROTOCOLS)


def _to_matches(rules: list[CompiledEgressRule], workload: Workload) -> tuple[bool, ...]:
    """Whether each rule's `to` admits the workload (its identity), whatever the port."""
    flow = Flow.build("", 0, destination=workload.ref, identity=workload.identity)
    return tuple(
        not rule.destinations or any(d.mismatch(flow) is None for d in rule.destinations)
        for rule in rules
    )


def _to_workloads(
    address: IpAddress, workloads: list[Workload]
) -> Callable[[EgressPlan, str, int], Iterable[Flow]]:
    def flows(plan: EgressPlan, protocol: str, port: int) -> list[Flow]:
        return [_flow(plan, port, protocol, address, w) for w in workloads]

    return flows


def _flow(
    plan: EgressPlan, port: int, protocol: str, address: IpAddress, to: Workload | None = None
) -> Flow:
    """The flow explain decides: to workload `to` (by its identity) or to `address` outside."""
    source = plan.workload.ref
    if to is None:
        return Flow.build(source, port, protocol, address=address)
    return Flow.build(
        source, port, protocol, destination=to.ref, identity=to.identity, address=address
    )


def _port_ranges(plan: EgressPlan) -> Iterable[tuple[int, int]]:
    for policy in plan.policies:
        for rule in policy.rules:
            yield from rule.ports or ()
            yield from rule.not_ports or ()


def _networks(plan: EgressPlan) -> Iterable[IpNetwork]:
    for policy in plan.policies:
        for rule in policy.rules:
            for dest in rule.destinations or ():
                yield from dest.ip_blocks or ()
                yield from dest.not_ip_blocks or ()


def _host_egress(host: Host, members: dict[IpAddress, list[Workload]]) -> SourceEgress | None:
    """The Host's own traffic under `defaultEgress: deny`: its rules, plus tcp to the mesh
    workloads' sidecar ports (the sidecars' mesh traffic)."""
    if not host.egress_closed:
        return None
    atoms = port_atoms(
        [*(r for rule in host.egress for r in rule.ports), *_sidecar_ranges(members)]
    )

    def outside(address: IpAddress) -> Opening:
        return opening(atoms, lambda protocol, port: _host_allows(host, address, protocol, port))

    own = {
        address: opening(atoms, _host_or_sidecar(host, address, workloads))
        for address, workloads in members.items()
    }
    cuts = network_cuts(n for rule in host.egress for n in rule.sources)
    return SourceEgress(f"Host {host.name}", entries(cuts, outside, own))


def _host_or_sidecar(
    host: Host, address: IpAddress, workloads: list[Workload]
) -> Callable[[str, int], bool]:
    sidecar = {p for w in workloads for p in w.ports}

    def allows(protocol: str, port: int) -> bool:
        return (protocol == "tcp" and port in sidecar) or _host_allows(
            host, address, protocol, port
        )

    return allows


def _sidecar_ranges(members: dict[IpAddress, list[Workload]]) -> list[tuple[int, int]]:
    return [(p, p) for workloads in members.values() for w in workloads for p in w.ports]


def _host_allows(host: Host, address: IpAddress, protocol: str, port: int) -> bool:
    return any(
        rule.protocol == protocol
        and any(low <= port <= high for low, high in rule.ports)
        and any(address.version == n.version and address in n for n in rule.sources)
        for rule in host.egress
    )


def _bypass(mesh: CompiledMesh, node: str) -> tuple[tuple[IpAddress, int], ...]:
    """(address, app port) of the workloads on other nodes whose app listens behind a sidecar:
    reaching it directly would bypass the sidecar, so no packet from this node may (loopback
    addresses are each host's own, and its input chain keeps app ports local)."""
    local = {w.ref for w in mesh.registry.on_node(node)}
    found: set[tuple[IpAddress, int]] = set()
    for workload in mesh.registry.workloads.values():
        if workload.ref in local:
            continue
        for number, port in workload.ports.items():
            app = port.target_port
            if app is not None and app != number:
                found.update((a, app) for a in workload.addresses if not a.is_loopback)
    return tuple(sorted(found, key=lambda item: (item[0].version, int(item[0]), item[1])))
