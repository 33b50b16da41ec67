"""Cross-document errors: things each document gets right alone but not together."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshwarden.engine._compiler import CompiledMesh
from meshwarden.engine._condition_keys import ConditionKey
from meshwarden.engine._diagnostics import Diagnostic, Location, error
from meshwarden.engine._documents import Document, DocumentKey
from meshwarden.engine._limits import over_limit
from meshwarden.engine._model import AuthorizationPolicySpec, Operation, Rule
from meshwarden.engine._plan import CompiledPolicy
from meshwarden.engine._registry import Registry
from meshwarden.engine._reserved import RESERVED_PATH, is_reserved
from meshwarden.engine._spiffe import SpiffeIdError, TrustDomain
from meshwarden.engine._validators import port_range

HTTP_FIELDS = ("methods", "not_methods", "paths", "not_paths", "hosts", "not_hosts")


def duplicates(documents: Iterable[Document[Any]]) -> list[Diagnostic]:
    seen: dict[DocumentKey, Document[Any]] = {}
    problems = []
    for doc in documents:
        first = seen.setdefault(doc.key, doc)
        if first is not doc:
            problems.append(
                error(
                    doc.at("metadata", "name"),
                    f"duplicate {doc.kind} {doc.ref}: already defined at "
                    f"{first.at('metadata', 'name')}; (kind, namespace, name) must be unique",
                )
            )
    return problems


def reserved_identities(
    documents: Iterable[Document[Any]], trust_domain: TrustDomain
) -> list[Diagnostic]:
    """A Workload `spiffeId` the mesh keeps for itself (see `is_reserved`) is an error."""
    problems = []
    for doc in documents:
        claimed = getattr(doc.spec, "spiffe_id", None) if doc.kind == "Workload" else None
        try:
            reserved = claimed is not None and is_reserved(claimed, trust_domain)
        except SpiffeIdError:
            continue  # reported where the field is validated
        if reserved:
            td = f"spiffe://{trust_domain}"
            problems.append(
                error(
                    doc.at("spec", "spiffeId"),
                    f"spiffeId {claimed!r} of workload {doc.ref} is reserved: {td} and "
                    f"{td}{RESERVED_PATH}/... name the mesh's control plane and nodes; "
                    "choose another path (the default is /ns/NAMESPACE/sa/SERVICE_ACCOUNT)",
                )
            )
    return problems


def plan_size(
    documents: Iterable[Document[Any]], registry: Registry, limit: int
) -> list[Diagnostic]:
    """An error at the policy that takes (rules x workloads selected) over `limit`, before
    anything is compiled: the plans would hold that many entries."""
    total = 0
    for doc in documents:
        if doc.kind != "AuthorizationPolicy":
            continue
        rules = max(1, len(doc.spec.rules or ()))
        targets = len(registry.targets(doc))
        total += rules * targets
        if total > limit:
            what = (
                f"policy {doc.ref} ({rules:,} rules x {targets:,} selected workloads) takes the "
                f"mesh over {limit:,} (rule, workload) pairs"
            )
            return [error(doc.at("metadata", "name"), over_limit(what))]
    return []


def policy_errors(mesh: CompiledMesh, policy: CompiledPolicy) -> list[Diagnostic]:
    doc: Document[AuthorizationPolicySpec] = policy.document
    problems: list[Diagnostic] = []
    for i, rule in enumerate(doc.spec.rules or []):
        problems.extend(_http_on_tcp(mesh, policy, rule, i))
        problems.extend(_jwt_without_issuer(mesh, policy, rule, i))
    return problems


Reach = tuple[list[tuple[int, int]] | None, frozenset[str] | None]  # port ranges, transports
Hit = tuple[str, int, str]  # workload, port, protocol


def _rule_reach(rule: Rule) -> Reach:
    """The port ranges and transports a whole rule can reach (None: any)."""
    if not rule.to:
        return None, None
    ranges = None
    if all(op.ports is not None for op in rule.to):
        ranges = [port_range(p) for op in rule.to for p in op.ports or ()]
    protocols = None
    if all(op.protocols is not None for op in rule.to):
        protocols = frozenset(t for op in rule.to for t in op.protocols or ())
    return ranges, protocols


def _op_reach(op: Operation) -> Reach:
    ranges = None if op.ports is None else [port_range(p) for p in op.ports]
    return ranges, None if op.protocols is None else frozenset(op.protocols)


def _tcp_port(mesh: CompiledMesh, policy: CompiledPolicy, reach: Reach) -> Hit | None:
    """The first (workload, port, protocol) that is not http/grpc (tcp, udp or sctp) and that a
    rule limited to `reach` applies to."""
    ranges, protocols = reach
    for ref in sorted(policy.targets):
        for port in mesh.registry.workloads[ref].all_ports():
            in_rule = ranges is None or any(lo <= port.port <= hi for lo, hi in ranges)
            if in_rule and (protocols is None or port.transport in protocols) and not port.is_http:
                return ref, port.port, port.protocol
    return None


def _http_on_tcp(
    mesh: CompiledMesh, policy: CompiledPolicy, rule: Rule, i: int
) -> list[Diagnostic]:
    doc = policy.document
    found: list[tuple[Location, str, Hit]] = []
    rule_tcp = _tcp_port(mesh, policy, _rule_reach(rule))
    for j, op in enumerate(rule.to or []):
        hit = _tcp_port(mesh, policy, _op_reach(op))
        for name in HTTP_FIELDS:
            if hit and getattr(op, name) is not None:
                camel = name.replace("_m", "M").replace("_p", "P").replace("_h", "H")
                found.append((doc.key_at("spec", "rules", i, "to", j, camel), camel, hit))
    if rule_tcp:
        for k, source in enumerate(rule.from_ or []):
            if source.jwt is not None:
                found.append((doc.key_at("spec", "rules", i, "from", k, "jwt"), "jwt", rule_tcp))
        for k, cond in enumerate(rule.when or []):
            if ConditionKey.parse(cond.key).is_http:
                found.append((doc.at("spec", "rules", i, "when", k, "key"), cond.key, rule_tcp))
    return [
        error(
            where,
            f"{what} is HTTP-only but rule {i} of {policy.ref} applies to {protocol} port "
            f"{port} of workload {ref}; limit the rule with to.ports to http/grpc ports, "
            "or set that port's protocol to http",
        )
        for where, what, (ref, port, protocol) in found
    ]


def _jwt_without_issuer(
    mesh: CompiledMesh, policy: CompiledPolicy, rule: Rule, i: int
) -> list[Diagnostic]:
    places = [
        (policy.document.key_at("spec", "rules", i, "from", k, "jwt"), "a jwt source")
        for k, s in enumerate(rule.from_ or [])
        if s.jwt is not None
    ]
    places += [
        (policy.document.at("spec", "rules", i, "when", k, "key"), f"condition {c.key}")
        for k, c in enumerate(rule.when or [])
        if c.key.startswith("request.jwt.claims[")
    ]
    lacking = sorted(ref for ref in policy.targets if not mesh.issuers_for(ref))
    if not places or not lacking:
        return []
    where, what = places[0]
    more = f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else ""
    return [
        error(
            where,
            f"rule {i} of {policy.ref} has {what}, which needs a verified JWT"
            f"{_named_issuers(rule)}, but no JwtIssuer selects workload {lacking[0]}{more}; "
            "add a JwtIssuer for it or remove the JWT constraint",
        )
    ]


def _named_issuers(rule: Rule) -> str:
    names = sorted({i for s in rule.from_ or [] if s.jwt for i in s.jwt.issuers or []})
    return f" (from {', '.join(names)})" if names else ""
