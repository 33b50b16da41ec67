"""Warnings: policies that are valid but almost certainly not what their author meant."""

from __future__ import annotations

from meshwarden.engine._compiler import CompiledMesh
from meshwarden.engine._diagnostics import Diagnostic, warning
from meshwarden.engine._hosts import host_warnings
from meshwarden.engine._model import AuthorizationPolicySpec
from meshwarden.engine._patterns import IpNetwork, Patterns
from meshwarden.engine._plan import CompiledPolicy
from meshwarden.engine._rules import CompiledOperation, CompiledRule, CompiledSource
from meshwarden.engine._spiffe import namespace_of
from meshwarden.engine._vocabulary import Action, Peers


def warnings(mesh: CompiledMesh) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for policy in mesh.policies.values():
        found.extend(_policy_warnings(mesh, policy))
    found.extend(_shadowed(mesh))
    found.extend(host_warnings(mesh.registry))
    for doc, targets in mesh.issuers.values():
        if not targets:
            found.append(
                warning(
                    doc.at("spec", "selector"),
                    f"JwtIssuer {doc.ref} selects no workload; check its selector and namespace",
                )
            )
    for ref, service in mesh.registry.services.items():
        if not mesh.registry.select(service.metadata.namespace, service.spec.selector):
            found.append(
                warning(service.at("spec", "selector"), f"Service {ref} selects no workload")
            )
    return found


def _policy_warnings(mesh: CompiledMesh, policy: CompiledPolicy) -> list[Diagnostic]:
    doc = policy.document
    spec: AuthorizationPolicySpec = doc.spec
    found = []
    if not policy.targets:
        scope = (
            "in the mesh"
            if mesh.registry.is_root(policy.namespace)
            else (f"in namespace {policy.namespace}")
        )
        found.append(
            warning(doc.at("spec", "selector"), f"policy {policy.ref} selects no workload {scope}")
        )
    if not spec.rules and policy.action != Action.ALLOW:
        found.append(
            warning(
                doc.at("spec"),
                f"{policy.action} policy {policy.ref} has no rules, so it matches nothing",
            )
        )
    strict = mesh.registry.mesh.spec.mtls == "STRICT"
    for i, rule in enumerate(policy.rules):
        for k, source in enumerate(rule.sources or ()):
            reason = _source_never_matches(source, strict)
            if reason:
                where = doc.at("spec", "rules", i, "from", k)
                found.append(
                    warning(
                        where,
                        f"rule {i} of {policy.ref} can never match through source {k}: {reason}",
                    )
                )
        for k, cond in enumerate(rule.conditions):
            if strict and cond.key.peers is Peers.PLAINTEXT:
                found.append(
                    warning(
                        doc.at("spec", "rules", i, "when", k, "key"),
                        f"rule {i} of {policy.ref} can never match: source.ip applies only to "
                        "peers without an identity, and mTLS is STRICT",
                    )
                )
        found.extend(_ports_warning(mesh, policy, rule))
    return found


def _source_never_matches(source: CompiledSource, strict: bool) -> str:
    if source.needs_identity and source.needs_plaintext:
        return (
            "it combines identity fields with ipBlocks/notIpBlocks, but IP fields match "
            "only peers without an identity"
        )
    if source.needs_plaintext and strict:
        return "ipBlocks/notIpBlocks match only plaintext peers, and mTLS is STRICT"
    if source.workloads is not None and not source.workloads:
        return "its workloads selector matches no workload"
    if source.not_identities is not None and source.not_identities.anything:
        return "notIdentities contains '*'"
    return ""


def _ports_warning(
    mesh: CompiledMesh, policy: CompiledPolicy, rule: CompiledRule
) -> list[Diagnostic]:
    if not rule.operations or not policy.targets:
        return []
    exposed = {p for ref in policy.targets for p in mesh.registry.workloads[ref].ports}
    for op in rule.operations:
        if op.ports is None or any(lo <= p <= hi for lo, hi in op.ports for p in exposed):
            return []
    return [
        warning(
            rule.location,
            f"rule {rule.index} of {policy.ref} can never match: none of "
            f"its ports is exposed by the selected workloads (ports: "
            f"{', '.join(map(str, sorted(exposed))) or 'none'})",
        )
    ]


Ranked = tuple[tuple[int, int], CompiledRule, CompiledPolicy]


def _shadowed(mesh: CompiledMesh) -> list[Diagnostic]:
    """Rules fully covered by an earlier rule of the same action (or an ALLOW rule covered by a
    DENY rule). Candidates come from an index on exact identities, so a mesh of many
    identity-specific rules is not compared pairwise."""
    found = []
    enforced = sorted(
        (p for p in mesh.policies.values() if not p.dry_run and p.action != "AUDIT" and p.targets),
        key=lambda p: (p.namespace, p.name),
    )
    order = {p.ref: n for n, p in enumerate(enforced)}
    groups: dict[str, _RivalIndex] = {}
    for later in enforced:
        some_target = min(later.targets)
        if some_target not in groups:
            refs = [r for r in mesh.by_workload[some_target] if r in order]
            groups[some_target] = _RivalIndex([mesh.policies[r] for r in refs], order)
        for rule in later.rules:
            shadow = _find_shadow(rule, later, groups[some_target], order)
            if shadow is not None:
                deny = shadow.policy != later.ref and _is_deny(mesh, shadow)
                verb = "denied" if deny else "already matched"
                found.append(warning(rule.location, f"rule {rule.index} of {later.ref} is fully "
                                     f"shadowed: every request it matches is {verb} by rule "
                                     f"{shadow.name} first"))  # fmt: skip
    return found


def _signature(rule: CompiledRule) -> frozenset[str] | None:
    """The exact identities a rule is limited to, or None when it is not limited to a finite
    set of exact identities (wildcards, namespaces, no `from`, IP sources...)."""
    if not rule.sources:
        return None
    ids: set[str] = set()
    for source in rule.sources:
        if source.workloads is not None:
            ids |= source.workloads
        elif source.identities is not None and not (
            source.identities.anything or source.identities.prefixes or source.identities.suffixes
        ):
            ids |= source.identities.exact
        else:
            return None
    return frozenset(ids)


class _RivalIndex:
    """The enforced rules applying to one workload, in policy order, indexed by identity."""

    def __init__(self, policies: list[CompiledPolicy], order: dict[str, int]) -> None:
        self.by_identity: dict[str, list[Ranked]] = {}
        self.open: list[Ranked] = []
        for policy in sorted(policies, key=lambda p: order[p.ref]):
            for rule in policy.rules:
                entry = ((order[policy.ref], rule.index), rule, policy)
                signature = _signature(rule)
                if signature is None:
                    self.open.append(entry)
                for identity in signature or ():
                    self.by_identity.setdefault(identity, []).append(entry)

    def candidates(self, rule: CompiledRule) -> list[Ranked]:
        signature = _signature(rule)
        found = list(self.open)
        if signature:
            found += self.by_identity.get(min(signature), [])
        return sorted(found, key=lambda e: e[0])


def _is_deny(mesh: CompiledMesh, rule: CompiledRule) -> bool:
    return mesh.policies[rule.policy].action == Action.DENY


def _find_shadow(
    rule: CompiledRule, policy: CompiledPolicy, rivals: _RivalIndex, order: dict[str, int]
) -> CompiledRule | None:
    position = (order[policy.ref], rule.index)
    for rank, other, rival in rivals.candidates(rule):
        if other is rule:
            continue
        same = rival.action == policy.action
        if not (same or (rival.action == Action.DENY and policy.action == Action.ALLOW)):
            continue
        if same and rank >= position:
            continue
        if rival.targets >= policy.targets and covers(other, rule):
            return other
    return None


def covers(a: CompiledRule, b: CompiledRule) -> bool:
    """Conservatively: does rule `a` match every request rule `b` matches?"""
    if a.sources and not (
        b.sources and all(any(_covers_source(x, y) for x in a.sources) for y in b.sources)
    ):
        return False
    if a.operations and not (
        b.operations and all(any(_covers_op(x, y) for x in a.operations) for y in b.operations)
    ):
        return False
    return all(cond in b.conditions for cond in a.conditions)


def _covers_patterns(a: Patterns | None, b: Patterns | None) -> bool:
    return a is None or (b is not None and a.covers(b))


def _covers_namespaces(a: Patterns | None, b: CompiledSource) -> bool:
    """Every identity `b` admits is in one of the namespaces `a` names: `b`'s own namespaces
    are covered, or `b` is limited to exact identities (or workloads) all in them."""
    if a is None or b.namespaces is not None:
        return _covers_patterns(a, b.namespaces)
    ids = b.workloads
    if ids is None and b.identities is not None:
        exact = b.identities
        ids = None if exact.anything or exact.prefixes or exact.suffixes else exact.exact
    return ids is not None and all(a.matches(namespace_of(i)) for i in ids)


def _same_or_absent(a: object, b: object) -> bool:
    return a is None or a == b


def _covers_source(a: CompiledSource, b: CompiledSource) -> bool:
    return (
        _covers_patterns(a.identities, b.identities)
        and _covers_namespaces(a.namespaces, b)
        and (a.workloads is None or (b.workloads is not None and a.workloads >= b.workloads))
        and _same_or_absent(a.not_identities, b.not_identities)
        and _same_or_absent(a.jwt, b.jwt)
        and (
            a.ip_blocks is None
            or (
                b.ip_blocks is not None
                and all(any(_subnet(n, m) for m in a.ip_blocks) for n in b.ip_blocks)
            )
        )
        and _same_or_absent(a.not_ip_blocks, b.not_ip_blocks)
    )


def _covers_op(a: CompiledOperation, b: CompiledOperation) -> bool:
    if a.ports is not None and not (
        b.ports is not None
        and all(any(lo <= blo and bhi <= hi for lo, hi in a.ports) for blo, bhi in b.ports)
    ):
        return False
    return (
        _same_or_absent(a.not_ports, b.not_ports)
        and _covers_patterns(a.methods, b.methods)
        and _covers_patterns(a.paths, b.paths)
        and _covers_patterns(a.hosts, b.hosts)
        and _same_or_absent(a.not_methods, b.not_methods)
        and _same_or_absent(a.not_paths, b.not_paths)
        and _same_or_absent(a.not_hosts, b.not_hosts)
    )


def _subnet(inner: IpNetwork, outer: IpNetwork) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]
