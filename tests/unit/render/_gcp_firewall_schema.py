"""The required-field and format checks of a `compute.firewalls.insert` body, written from
Google's documented Firewall resource (compute/docs/reference/rest/v1/firewalls): there is no
offline validator like botocore's for GCP, so these are the documented rules a body must meet."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
FIELDS = {
    "name",
    "description",
    "network",
    "priority",
    "sourceRanges",
    "destinationRanges",
    "sourceTags",
    "targetTags",
    "sourceServiceAccounts",
    "targetServiceAccounts",
    "allowed",
    "denied",
    "direction",
    "logConfig",
    "disabled",
}
PROTOCOLS = {"tcp", "udp", "icmp", "esp", "ah", "sctp", "ipip", "all"}
PORTED = {"tcp", "udp", "sctp", "all"}
PORT = re.compile(r"([0-9]{1,5})(-([0-9]{1,5}))?")


def firewall_problems(body: dict[str, Any]) -> list[str]:
    problems = [f"unknown field {k}" for k in body if k not in FIELDS]
    if not isinstance(body.get("name"), str) or not NAME.fullmatch(body["name"]):
        problems.append(f"name {body.get('name')!r} must match RFC 1035, at most 63 characters")
    if not 0 <= body.get("priority", 1000) <= 65535:
        problems.append("priority must be 0-65535")
    if body.get("direction", "INGRESS") not in ("INGRESS", "EGRESS"):
        problems.append("direction must be INGRESS or EGRESS")
    if ("allowed" in body) == ("denied" in body):
        problems.append("exactly one of allowed and denied")
    for entry in body.get("allowed", []) + body.get("denied", []):
        problems.extend(_protocol_problems(entry))
    if body.get("direction", "INGRESS") == "INGRESS" and not any(
        body.get(k) for k in ("sourceRanges", "sourceTags", "sourceServiceAccounts")
    ):
        problems.append("an INGRESS rule needs sourceRanges, sourceTags or sourceServiceAccounts")
    versions = {ipaddress.ip_network(r).version for r in body.get("sourceRanges", [])}
    if len(versions) > 1:
        problems.append("sourceRanges may not mix IPv4 and IPv6")
    for tag in body.get("targetTags", []):
        if not NAME.fullmatch(tag):
            problems.append(f"target tag {tag!r} must match RFC 1035")
    if len(body.get("description", "")) > 2048:
        problems.append("description longer than 2048 characters")
    return problems


def _protocol_problems(entry: dict[str, Any]) -> list[str]:
    protocol = entry.get("IPProtocol")
    if protocol not in PROTOCOLS and not str(protocol).isdigit():
        return [f"IPProtocol {protocol!r} is not a protocol name or number"]
    problems = []
    if entry.get("ports") and protocol not in PORTED:
        problems.append(f"ports are only allowed with {sorted(PORTED)}")
    for port in entry.get("ports", []):
        match = PORT.fullmatch(port) if isinstance(port, str) else None
        if match is None or not all(0 <= int(p) <= 65535 for p in match.group(1, 3) if p):
            problems.append(f"port {port!r} must be a string 'N' or 'N-M'")
    return problems
