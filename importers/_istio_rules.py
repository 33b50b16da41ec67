"""Istio's implicit behaviours, written out as explicit rules.

1. **HTTP-only fields on tcp ports** (methods, paths, hosts, their not-forms, request
   principals, header and JWT conditions). Istio drops, for a tcp port, the operation, source or
   whole rule (`when`) of an ALLOW policy that uses them (a smaller ALLOW), and ignores those
   fields in a DENY or AUDIT policy (a wider DENY: "all TCP traffic on port 8080 would be
   denied"). The policy language refuses the implicit form (semantic 8), so such a rule becomes
   the rule itself limited to the targets' HTTP ports, plus its tcp reading limited to their tcp
   ports.
2. **Negative identity fields and plaintext peers.** In Istio `notPrincipals`/`notNamespaces`
   (and `notValues` on source.principal/source.namespace) match a peer without a certificate,
   whose principal is empty; here identity fields never match such a peer. A rule with such a
   field and no positive one gets a companion for plaintext peers: the same rule without the
   negative identity fields, limited to peers without an identity (`ipBlocks: [0.0.0.0/0, ::/0]`).
"""

from __future__ import annotations

from typing import Any

Rule = dict[str, Any]
HTTP_OPERATION_FIELDS = ("methods", "notMethods", "paths", "notPaths", "hosts", "notHosts")
_IDENTITY_KEYS = ("source.identity", "source.namespace")
_POSITIVE_IDENTITY = ("identities", "namespaces", "workloads")
PLAINTEXT_ONLY = ["0.0.0.0/0", "::/0"]


def _http_condition(cond: dict[str, Any]) -> bool:
    return str(cond["key"]).startswith(("request.headers[", "request.jwt.claims["))


def uses_http(rule: Rule) -> bool:
    return (
        any(k in op for op in rule.get("to") or [] for k in HTTP_OPERATION_FIELDS)
        or any("jwt" in s for s in rule.get("from") or [])
        or any(_http_condition(c) for c in rule.get("when") or [])
    )


def uses_token(rule: Rule) -> bool:
    """Whether the rule needs a verified token (a `jwt` source or a claim condition)."""
    return any("jwt" in s for s in rule.get("from") or []) or any(
        str(c["key"]).startswith("request.jwt.claims[") for c in rule.get("when") or []
    )


def limit_to_ports(rule: Rule, ports: list[int]) -> Rule | None:
    """The rule applying only to `ports`; None when no operation can reach one of them."""
    if not rule.get("to"):
        return {**rule, "to": [{"ports": list(ports)}]}
    operations = []
    for op in rule["to"]:
        if "ports" not in op:
            operations.append({**op, "ports": list(ports)})
            continue
        kept = [p for p in op["ports"] if p in ports]
        if kept:
            operations.append({**op, "ports": kept})
    return {**rule, "to": operations} if operations else None


def tcp_reading(rule: Rule, action: str) -> Rule | None:
    """What Istio makes of the rule on a tcp port (see the module docstring); None: nothing."""
    if action == "ALLOW":
        if any(_http_condition(c) for c in rule.get("when") or []):
            return None
        out = dict(rule)
        for key, is_http in (("to", _op_is_http), ("from", lambda s: "jwt" in s)):
            if rule.get(key):
                kept = [part for part in rule[key] if not is_http(part)]
                if not kept:
                    return None
                out[key] = kept
        return out
    out = dict(rule)
    if rule.get("to"):
        out["to"] = [
            {k: v for k, v in op.items() if k not in HTTP_OPERATION_FIELDS} for op in rule["to"]
        ]
    if rule.get("from"):
        out["from"] = [{k: v for k, v in s.items() if k != "jwt"} for s in rule["from"]]
    if rule.get("when"):
        out["when"] = [c for c in rule["when"] if not _http_condition(c)]
    return {k: v for k, v in out.items() if v != []}


def _op_is_http(op: dict[str, Any]) -> bool:
    return any(k in op for k in HTTP_OPERATION_FIELDS)


def split_by_protocol(
    rule: Rule, action: str, http_ports: list[int], tcp_ports: list[int]
) -> list[Rule]:
    """The explicit rules for one translated Istio rule on targets with these ports."""
    if not uses_http(rule) or not tcp_ports:
        return [rule]
    out = []
    if http_ports:
        limited = limit_to_ports(rule, http_ports)
        if limited is not None:
            out.append(limited)
    tcp = tcp_reading(rule, action)
    if tcp is not None:
        limited = limit_to_ports(tcp, tcp_ports) if http_ports else tcp
        if limited is not None:
            out.append(limited)
    return out


def plaintext_companion(rule: Rule) -> Rule | None:
    """The rule's meaning for peers without an identity, when only a negative identity field
    keeps the translated rule from matching them; None when no companion is needed."""
    negative_conditions = [
        c for c in rule.get("when") or [] if c["key"] in _IDENTITY_KEYS and "values" not in c
    ]
    negative_sources = any("notIdentities" in s for s in rule.get("from") or [])
    if not negative_conditions and not negative_sources:
        return None
    if any(c["key"] in _IDENTITY_KEYS and "values" in c for c in rule.get("when") or []):
        return None
    sources = []
    for source in rule.get("from") or [{}]:
        if any(k in source for k in _POSITIVE_IDENTITY):
            continue
        plain = {k: v for k, v in source.items() if k != "notIdentities"}
        plain.setdefault("ipBlocks", list(PLAINTEXT_ONLY))
        sources.append(plain)
    if not sources:
        return None
    out = {**rule, "from": sources}
    when = [c for c in rule.get("when") or [] if c not in negative_conditions]
    if when:
        out["when"] = when
    else:
        out.pop("when", None)
    return out
