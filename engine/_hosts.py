"""Hosts: the machines of the mesh, their addresses and their host-level (IP-only) rules.

A Host rule is about packets, and packets carry no identity: its sources are address ranges.
A Host is closed by default, so a Host whose rules open none of its management ports would lock
its operators out; that is an error at load time, never a table that gets applied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshwarden.engine._diagnostics import Diagnostic, error, warning
from meshwarden.engine._documents import Document
from meshwarden.engine._model import HostEgressRule, HostPeer, HostRule, HostSpec
from meshwarden.engine._patterns import IpAddress, IpNetwork, parse_address
from meshwarden.engine._validators import port_range

if TYPE_CHECKING:
    from meshwarden.engine._registry import Registry

EVERYWHERE: tuple[IpNetwork, ...] = (
    ipaddress.IPv4Network("0.0.0.0/0"),
    ipaddress.IPv6Network("::/0"),
)


@dataclass(frozen=True, slots=True)
class HostPort:
    """One Host rule, compiled: protocol, inclusive port ranges and the peer networks (with the
    except-ranges already taken out) it admits: sources for `ingress`, destinations for
    `egress`."""

    protocol: str
    ports: tuple[tuple[int, int], ...]
    sources: tuple[IpNetwork, ...]
    origin: str  # "Host NAME ingress[i]" or "Host NAME egress[i]"


@dataclass(frozen=True, slots=True, eq=False)
class Host:
    """A Host document resolved: its node, addresses, management ports and compiled rules."""

    name: str
    node: str
    addresses: tuple[IpAddress, ...]
    management_ports: tuple[int, ...]
    rules: tuple[HostPort, ...]
    document: Document[HostSpec]
    egress: tuple[HostPort, ...] = ()
    egress_closed: bool = False  # `defaultEgress: deny`: only `egress` rules leave the host


def peer_networks(peers: list[HostPeer] | None) -> tuple[IpNetwork, ...]:
    """The networks a rule's `from` admits, as disjoint CIDRs (omitted or []: everywhere)."""
    if not peers:
        return EVERYWHERE
    found: list[IpNetwork] = []
    for peer in peers:
        blocks = [ipaddress.ip_network(b) for b in peer.ip_blocks or ()] or list(EVERYWHERE)
        excepts = [ipaddress.ip_network(b) for b in peer.not_ip_blocks or ()]
        found.extend(subtract_networks(blocks, excepts))
    return collapse_networks(found)


def subtract_networks(
    networks: Iterable[IpNetwork], excepts: Iterable[IpNetwork]
) -> list[IpNetwork]:
    """`networks` minus `excepts`, as CIDRs."""
    result = list(networks)
    for hole in excepts:
        next_result: list[IpNetwork] = []
        for net in result:
            if net.version != hole.version or not net.overlaps(hole):
                next_result.append(net)
            elif not hole.supernet_of(net):  # type: ignore[arg-type]
                next_result.extend(net.address_exclude(hole))  # type: ignore[arg-type]
        result = next_result
    return result


def collapse_networks(networks: Iterable[IpNetwork]) -> tuple[IpNetwork, ...]:
    """Merged and sorted, IPv4 first."""
    nets = list(networks)
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return (*v4, *v6)


def _compile_rule(host: str, index: int, rule: HostRule | HostEgressRule) -> HostPort:
    ports = tuple(port_range(p) for p in rule.ports)
    if isinstance(rule, HostEgressRule):
        return HostPort(
            rule.protocol, ports, peer_networks(rule.to), f"Host {host} egress[{index}]"
        )
    return HostPort(
        rule.protocol, ports, peer_networks(rule.from_), f"Host {host} ingress[{index}]"
    )


def _keeps_management(rules: Iterable[HostPort], management: Iterable[int]) -> bool:
    return any(
        rule.protocol == "tcp" and rule.sources and low <= port <= high
        for rule in rules
        for low, high in rule.ports
        for port in management
    )


def build_hosts(
    documents: Iterable[Document[HostSpec]],
) -> tuple[dict[str, Host], list[Diagnostic]]:
    """Hosts by node name; a node named twice or a Host that locks out management is an error."""
    hosts: dict[str, Host] = {}
    problems: list[Diagnostic] = []
    for doc in documents:
        spec, name = doc.spec, doc.metadata.name
        node = spec.node_name or name
        rules = tuple(_compile_rule(name, i, r) for i, r in enumerate(spec.ingress))
        if node in hosts:
            first = hosts[node].document
            where = doc.at("spec", "nodeName") if spec.node_name else doc.at("metadata", "name")
            problems.append(
                error(
                    where,
                    f"node {node!r} already has Host {first.metadata.name} "
                    f"(at {first.at('metadata', 'name')}); one Host per node",
                )
            )
            continue
        if not _keeps_management(rules, spec.management_ports):
            problems.append(_lockout(doc))
            continue
        addresses = tuple(parse_address(a) for a in spec.addresses)
        egress = tuple(_compile_rule(name, i, r) for i, r in enumerate(spec.egress))
        closed = spec.default_egress == "deny"
        management = tuple(spec.management_ports)
        hosts[node] = Host(name, node, addresses, management, rules, doc, egress, closed)
    return hosts, problems


def _lockout(doc: Document[HostSpec]) -> Diagnostic:
    ports = ", ".join(str(p) for p in doc.spec.management_ports)
    where = doc.at("spec", "ingress") if doc.spec.ingress else doc.at("metadata", "name")
    return error(
        where,
        f"Host {doc.metadata.name} would lock out its operators: no ingress rule opens a "
        f"management port ({ports}/tcp) to any source; add one, e.g. "
        "{ports: [22], from: [{ipBlocks: [OPERATIONS_RANGE]}]}, or set spec.managementPorts",
    )


def host_warnings(registry: Registry) -> list[Diagnostic]:
    """A Host rule naming a port that only loopback may reach (an app port behind a sidecar, an
    upstream's local port): the rule has no effect there, which its author should know. Egress
    rules while `defaultEgress` is allow have no effect either."""
    found = []
    for host in registry.hosts.values():
        if host.egress and not host.egress_closed:
            text = (
                f"Host {host.name} has egress rules but defaultEgress is allow: every "
                "destination is open, so they have no effect; set defaultEgress: deny"
            )
            found.append(warning(host.document.at("spec", "egress"), text))
        local = _loopback_ports(registry, host.node)
        for i, rule in enumerate(host.rules):
            for port, why in sorted(local.items()):
                if rule.protocol == "tcp" and any(lo <= port <= hi for lo, hi in rule.ports):
                    where = host.document.at("spec", "ingress", i, "ports")
                    text = f"port {port} is {why}: it stays reachable from loopback only"
                    found.append(warning(where, text + "; this rule does not open it"))
    return found


def _loopback_ports(registry: Registry, node: str) -> dict[int, str]:
    ports: dict[int, str] = {}
    for workload in registry.on_node(node):
        for number, port in workload.ports.items():
            if port.target_port is not None and port.target_port != number:
                ports[port.target_port] = f"workload {workload.ref}'s app port behind its sidecar"
        for upstream in workload.spec.upstreams:
            ports[upstream.local_port] = (
                f"workload {workload.ref}'s local port to {upstream.service}"
            )
    return ports
