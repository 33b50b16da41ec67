"""A node's filter as the edge layer of a cloud provider: AWS security-group ingress permissions
and GCP VPC firewall rules. Both are closed by default, so only what is reachable from outside
the host is rendered: ports open to everywhere and ports narrowed to address ranges. Ports
reachable only from the host's loopback are simply absent.

Egress at the edge is per instance, not per workload: it is the union of what any sender on the
node may send (the Host's rules, every workload's egress), and only when that union bounds
everything that leaves — the Host has `defaultEgress: deny` and every workload keyed on the node
is filtered. Otherwise the edge stays open outbound (the kernel layer holds each sender back).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

from meshwarden.engine import collapse_networks
from meshwarden.render._filter import IpNetwork, NodeFilter, PortRule

GCP_NAME_LIMIT = 63
AWS_PROTOCOL = {"sctp": "132"}  # AWS names tcp, udp and icmp; other protocols by IANA number


def _reachable(nf: NodeFilter) -> list[PortRule]:
    return [r for r in nf.ports if r.sources]


def _description(rule: PortRule) -> str:
    text = "meshwarden: " + "; ".join(rule.origins)
    return text if len(text) <= 255 else text[:252] + "..."


def _egress(nf: NodeFilter) -> list[PortRule] | None:
    """What may leave the node, as port rules whose `sources` are DESTINATIONS (None: not
    bounded, the edge stays open outbound)."""
    egress = nf.egress
    if not egress.bounded or egress.host is None:
        return None
    networks: dict[tuple[str, int, int], list[IpNetwork]] = defaultdict(list)
    origins: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    for source in [*egress.sources, egress.host]:
        for entry in source.allowed:
            key = (entry.protocol, entry.low, entry.high)
            networks[key].extend(entry.networks)
            origins[key].add(f"egress of {source.name}")
    return [
        PortRule(*key, collapse_networks(networks[key]), tuple(sorted(origins[key])))
        for key in sorted(networks)
    ]


def render_aws_security_group(nf: NodeFilter, egress: bool = False) -> dict[str, Any]:
    """The `IpPermissions` of `aws ec2 authorize-security-group-ingress` (pass it with
    `--group-id sg-... --cli-input-json file://FILE`); with `egress`, those of
    `authorize-security-group-egress` (every address when the node's egress is not bounded)."""
    if not egress:
        return {"IpPermissions": _permissions(nf, _reachable(nf))}
    rules = _egress(nf)
    if rules is None:
        return {"IpPermissions": [_open_permission()]}
    return {"IpPermissions": _permissions(nf, rules)}


def _open_permission() -> dict[str, Any]:
    description = (
        "meshwarden: egress not bounded (no Host with defaultEgress: deny, or a sender open)"
    )
    return {
        "IpProtocol": "-1",
        "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": description}],
        "Ipv6Ranges": [{"CidrIpv6": "::/0", "Description": description}],
    }


def _permissions(nf: NodeFilter, rules: list[PortRule]) -> list[dict[str, Any]]:
    permissions = []
    for rule in rules:
        description = _description(rule)
        permission: dict[str, Any] = {
            "IpProtocol": AWS_PROTOCOL.get(rule.protocol, rule.protocol),
            "FromPort": rule.low,
            "ToPort": rule.high,
        }
        v4 = [str(n) for n in nf.sources_of(rule, 4)]
        v6 = [str(n) for n in nf.sources_of(rule, 6)]
        if v4:
            permission["IpRanges"] = [{"CidrIp": c, "Description": description} for c in v4]
        if v6:
            permission["Ipv6Ranges"] = [{"CidrIpv6": c, "Description": description} for c in v6]
        permissions.append(permission)
    return permissions


def render_gcp_firewall(
    nf: NodeFilter, network: str = "global/networks/default", priority: int = 1000
) -> list[dict[str, Any]]:
    """Bodies for `compute.firewalls.insert`, one per group of ports sharing their peer ranges
    and address family (a rule may not mix IPv4 and IPv6 ranges). Rules target instances tagged
    with the node name (`targetTags`). When the node's egress is bounded, EGRESS rules allow
    what may leave and one deny rule per family (priority 65534) closes the rest."""
    bodies = _gcp_bodies(nf, _reachable(nf), "INGRESS", network, priority)
    egress = _egress(nf)
    if egress is not None:
        bodies += _gcp_bodies(nf, egress, "EGRESS", network, priority)
        bodies += [_gcp_deny_egress(nf, version, network) for version in (4, 6)]
    return sorted(bodies, key=lambda b: str(b["name"]))


def _gcp_bodies(
    nf: NodeFilter, rules: list[PortRule], direction: str, network: str, priority: int
) -> list[dict[str, Any]]:
    groups: dict[tuple[int, tuple[IpNetwork, ...]], list[PortRule]] = {}
    for rule in rules:
        for version in (4, 6):
            peers = nf.sources_of(rule, version)
            if peers:
                groups.setdefault((version, peers), []).append(rule)
    ranges = "sourceRanges" if direction == "INGRESS" else "destinationRanges"
    bodies = []
    for (version, peers), members in groups.items():
        allowed: dict[str, list[str]] = {}
        for rule in members:
            allowed.setdefault(rule.protocol, []).append(rule.ports)
        origins = tuple(o for rule in members for o in rule.origins)
        tag = ("v" if direction == "INGRESS" else "e") + str(version)
        body = {
            "name": _gcp_name(nf.node, tag, peers, allowed),
            "network": network,
            "direction": direction,
            "priority": priority,
            "description": _description(PortRule("", 0, 0, (), origins))[:2048],
            ranges: [str(n) for n in peers],
            "allowed": [{"IPProtocol": p, "ports": ports} for p, ports in sorted(allowed.items())],
            "targetTags": [_gcp_tag(nf.node)],
        }
        bodies.append(body)
    return bodies


def _gcp_deny_egress(nf: NodeFilter, version: int, network: str) -> dict[str, Any]:
    stem = "mw-" + _gcp_tag(nf.node)
    suffix = f"-egress-deny-v{version}"
    return {
        "name": stem[: GCP_NAME_LIMIT - len(suffix)].rstrip("-") + suffix,
        "network": network,
        "direction": "EGRESS",
        "priority": 65534,
        "description": f"meshwarden: Host {nf.node} defaultEgress: deny",
        "destinationRanges": ["0.0.0.0/0" if version == 4 else "::/0"],
        "denied": [{"IPProtocol": "all"}],
        "targetTags": [_gcp_tag(nf.node)],
    }


def _gcp_name(
    node: str, tag: str, peers: tuple[IpNetwork, ...], allowed: dict[str, list[str]]
) -> str:
    """`mw-NODE-v4-<hash>` (egress: `-e4-`): a valid RFC 1035 name, stable for the same
    content."""
    version = int(tag[1:])  # the ingress names hash the bare version, as before egress
    key = version if tag[0] == "v" else tag
    digest = hashlib.sha256(repr((key, peers, sorted(allowed.items()))).encode())
    suffix = f"-{tag}-{digest.hexdigest()[:10]}"
    stem = "mw-" + _gcp_tag(node)
    return stem[: GCP_NAME_LIMIT - len(suffix)].rstrip("-") + suffix


def _gcp_tag(node: str) -> str:
    """The network tag of the node's instances: its name with '.' as '-' (RFC 1035)."""
    return node.lower().replace(".", "-")[:GCP_NAME_LIMIT].rstrip("-")
