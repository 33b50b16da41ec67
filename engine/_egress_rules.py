"""Egress rules compiled for matching, decided at the source: where the workloads an egress
policy selects may connect. Like ingress rules, each part answers `mismatch(flow)`: None when it
matches, otherwise why not (the same code decides and explains).

The identity-first rule, seen from the source: a destination that is a workload of the mesh is
matched only by the identity fields (its SPIFFE ID), an address outside the mesh only by
`ipBlocks`/`notIpBlocks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshwarden.engine._conditions import PortRanges
from meshwarden.engine._diagnostics import Location
from meshwarden.engine._model import Destination, EgressRule
from meshwarden.engine._patterns import IpAddress, IpNetwork, Patterns
from meshwarden.engine._rules import identity_mismatch, ip_mismatch, networks_of, patterns_of
from meshwarden.engine._spiffe import SpiffeId
from meshwarden.engine._vocabulary import Peers


@dataclass(frozen=True, slots=True)
class Flow:
    """One connection (or UDP/SCTP flow) from the mesh workload `source`, as egress sees it.

    The destination is a workload of the mesh (`destination` is its ref, `identity` its SPIFFE
    ID) or an address outside the mesh (`destination` and `identity` None)."""

    source: str
    port: int
    protocol: str = "tcp"
    destination: str | None = None
    identity: str | None = None
    address: IpAddress | None = None
    identity_namespace: str | None = None

    @classmethod
    def build(
        cls,
        source: str,
        port: int,
        protocol: str = "tcp",
        *,
        destination: str | None = None,
        identity: str | None = None,
        address: IpAddress | None = None,
    ) -> Flow:
        namespace = SpiffeId.parse(identity).namespace() if identity else None
        return cls(source, port, protocol, destination, identity, address, namespace)

    @property
    def target(self) -> str:
        """How the destination is written in explanations."""
        if self.destination is not None:
            return self.destination
        return str(self.address) if self.address is not None else "(unknown address)"


@dataclass(frozen=True, slots=True)
class CompiledDestination:
    """One `to` destination of an egress rule, compiled for matching."""

    identities: Patterns | None
    not_identities: Patterns | None
    workloads: frozenset[str] | None
    namespaces: Patterns | None
    ip_blocks: tuple[IpNetwork, ...] | None
    not_ip_blocks: tuple[IpNetwork, ...] | None
    peers: Peers = field(init=False, compare=False)  # IDENTIFIED: mesh workloads only

    def __post_init__(self) -> None:
        identity_fields = (self.identities, self.not_identities, self.workloads, self.namespaces)
        identity = any(f is not None for f in identity_fields)
        outside = self.ip_blocks is not None or self.not_ip_blocks is not None
        object.__setattr__(self, "peers", Peers.needing(identity, outside))

    @classmethod
    def of(cls, dest: Destination, workload_ids: frozenset[str] | None) -> CompiledDestination:
        return cls(
            patterns_of(dest.identities),
            patterns_of(dest.not_identities),
            workload_ids,
            patterns_of(dest.namespaces),
            networks_of(dest.ip_blocks),
            networks_of(dest.not_ip_blocks),
        )

    def mismatch(self, flow: Flow) -> str | None:
        identity = flow.identity
        if not self.peers.admit(identity is not None):
            if identity is None:
                return "destination is outside the mesh (identity fields match only its workloads)"
            return "ipBlocks/notIpBlocks match only destinations outside the mesh"
        if identity is not None:
            return identity_mismatch(self, identity, flow.identity_namespace)
        return ip_mismatch(self, flow.address, "destination")


@dataclass(frozen=True, slots=True)
class CompiledEgressRule:
    """One rule of one egress policy, with its provenance (`ns/name#index`)."""

    policy: str
    index: int
    destinations: tuple[CompiledDestination, ...] | None
    ports: PortRanges | None
    not_ports: PortRanges | None
    protocols: frozenset[str] | None
    location: Location

    @classmethod
    def of(
        cls,
        policy: str,
        index: int,
        rule: EgressRule,
        destinations: tuple[CompiledDestination, ...] | None,
        location: Location,
    ) -> CompiledEgressRule:
        ports = None if rule.ports is None else PortRanges.of(rule.ports)
        not_ports = None if rule.not_ports is None else PortRanges.of(rule.not_ports)
        protocols = None if rule.protocols is None else frozenset(rule.protocols)
        return cls(policy, index, destinations, ports, not_ports, protocols, location)

    @property
    def name(self) -> str:
        return f"{self.policy}#{self.index}"

    def admits(self, port: int, protocol: str) -> bool:
        """Whether `ports`, `notPorts` and `protocols` let this port and protocol through."""
        return self.mismatch_port(port, protocol) is None

    def mismatch_port(self, port: int, protocol: str) -> str | None:
        if self.protocols is not None and protocol not in self.protocols:
            return f"protocol {protocol} not in protocols [{', '.join(sorted(self.protocols))}]"
        if self.ports is not None and not self.ports.contain(port):
            return f"port {port} not in ports"
        if self.not_ports is not None and self.not_ports.contain(port):
            return f"port {port} is in notPorts"
        return None

    def mismatch(self, flow: Flow) -> str | None:
        """Why this rule does not match `flow` (None: it matches)."""
        if self.destinations:
            reasons: list[str] = []
            for dest in self.destinations:
                reason = dest.mismatch(flow)
                if reason is None:
                    break
                numbered = len(self.destinations) > 1
                reasons.append(f"[{len(reasons)}] {reason}" if numbered else reason)
            else:
                return "to: " + "; ".join(reasons)
        reason = self.mismatch_port(flow.port, flow.protocol)
        return None if reason is None else "ports: " + reason

    def matches(self, flow: Flow) -> bool:
        return self.mismatch(flow) is None
