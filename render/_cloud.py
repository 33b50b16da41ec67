"""A node's filter as the edge layer of a cloud provider: AWS security-group ingress permissions
and GCP VPC firewall rules. Both are closed by default, so only what is reachable from outside
the host is rendered: ports open to everywhere and ports narrowed to address ranges. Ports
reachable only from the host's loopback are simply absent.
"""

from __future__ import annotations

import hashlib
from typing import Any

from meshwarden.render._filter import IpNetwork, NodeFilter, PortRule

GCP_NAME_LIMIT = 63
AWS_PROTOCOL = {"sctp": "132"}  # AWS names tcp, udp and icmp; other protocols by IANA number


def _reachable(nf: NodeFilter) -> list[PortRule]:
    return [r for r in nf.ports if r.sources]


def _description(rule: PortRule) -> str:
    text = "meshwarden: " + "; ".join(rule.origins)
    return text if len(text) <= 255 else text[:252] + "..."


def render_aws_security_group(nf: NodeFilter) -> dict[str, Any]:
    """The `IpPermissions` of `aws ec2 authorize-security-group-ingress` (pass it with
    `--group-id sg-... --cli-input-json file://FILE`)."""
    permissions = []
    for rule in _reachable(nf):
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
    return {"IpPermissions": permissions}


def render_gcp_firewall(
    nf: NodeFilter, network: str = "global/networks/default", priority: int = 1000
) -> list[dict[str, Any]]:
    """Bodies for `compute.firewalls.insert`, one per group of ports sharing their sources and
    address family (a rule may not mix IPv4 and IPv6 ranges). Rules target instances tagged with
    the node name (`targetTags`)."""
    groups: dict[tuple[int, tuple[IpNetwork, ...]], list[PortRule]] = {}
    for rule in _reachable(nf):
        for version in (4, 6):
            sources = nf.sources_of(rule, version)
            if sources:
                groups.setdefault((version, sources), []).append(rule)
    bodies = []
    for (version, sources), rules in groups.items():
        allowed: dict[str, list[str]] = {}
        for rule in rules:
            allowed.setdefault(rule.protocol, []).append(rule.ports)
        origins = tuple(o for rule in rules for o in rule.origins)
        body = {
            "name": _gcp_name(nf.node, version, sources, allowed),
            "network": network,
            "direction": "INGRESS",
            "priority": priority,
            "description": _description(PortRule("", 0, 0, (), origins))[:2048],
            "sourceRanges": [str(n) for n in sources],
            "allowed": [{"IPProtocol": p, "ports": ports} for p, ports in sorted(allowed.items())],
            "targetTags": [_gcp_tag(nf.node)],
        }
        bodies.append(body)
    return sorted(bodies, key=lambda b: str(b["name"]))


def _gcp_name(
    node: str, version: int, sources: tuple[IpNetwork, ...], allowed: dict[str, list[str]]
) -> str:
    """`mw-NODE-<hash>`: a valid RFC 1035 name, stable for the same content."""
    digest = hashlib.sha256(repr((version, sources, sorted(allowed.items()))).encode())
    suffix = f"-v{version}-{digest.hexdigest()[:10]}"
    stem = "mw-" + _gcp_tag(node)
    return stem[: GCP_NAME_LIMIT - len(suffix)].rstrip("-") + suffix


def _gcp_tag(node: str) -> str:
    """The network tag of the node's instances: its name with '.' as '-' (RFC 1035)."""
    return node.lower().replace(".", "-")[:GCP_NAME_LIMIT].rstrip("-")
