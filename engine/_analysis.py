"""Warnings: policies that are valid but almost certainly not what their author meant."""

from __future__ import annotations

from meshwarden.engine._compiler import CompiledMesh
from meshwarden.engine._diagnostics import Diagnostic, warning
from meshwarden.engine._egress_checks import egress_warnings
from meshwarden.engine._hosts import host_warnings
from meshwarden.engine._model import AuthorizationPolicySpec
from meshwarden.engine._mtls import any_plaintext
from meshwarden.engine._plan import CompiledPolicy
from meshwarden.engine._rules import CompiledRule, CompiledSource
from meshwarden.engine._shadow import RivalIndex, covers
from meshwarden.engine._vocabulary import Action, Peers


def warnings(mesh: CompiledMesh) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for policy in mesh.policies.values():
        found.extend(_policy_warnings(mesh, policy))
    found.extend(_shadowed(mesh))
    found.extend(host_warnings(mesh.registry))
    found.extend(egress_warnings(mesh.registry, list(mesh.egress_policies.values())))
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
    registry = mesh.registry
    targets = (registry.workloads[ref] for ref in policy.targets)
    strict = not any_plaintext(registry.mesh.spec, targets)
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
    DENY rule), found once per snapshot (`check` and `lint` both report them)."""
    found = mesh.derived.get("shadowed")
    if found is None:
        found = mesh.derived["shadowed"] = _find_shadowed(mesh)
    return list(found)


def _find_shadowed(mesh: CompiledMesh) -> list[Diagnostic]:
    """Candidates come from `RivalIndex`, so rules are not compared pairwise."""
    found = []
    enforced = sorted(
        (p for p in mesh.policies.values() if _enforced(p) and p.targets),
        key=lambda p: (p.namespace, p.name),
    )
    order = {p.ref: n for n, p in enumerate(enforced)}
    groups: dict[str, RivalIndex] = {}
    for later in enforced:
        some_target = min(later.targets)
        if some_target not in groups:
            refs = [r for r in mesh.by_workload[some_target] if r in order]
            groups[some_target] = RivalIndex([mesh.policies[r] for r in refs], order)
        for rule in later.rules:
            shadow = _find_shadow(rule, later, groups[some_target], order)
            if shadow is not None:
                deny = shadow.policy != later.ref and _is_deny(mesh, shadow)
                verb = "denied" if deny else "already matched"
                found.append(
                    warning(
                        rule.location,
                        f"rule {rule.index} of {later.ref} is fully "
                        f"shadowed: every request it matches is {verb} by rule "
                        f"{shadow.name} first",
                    )
                )
    return found


def _enforced(policy: CompiledPolicy) -> bool:
    return not policy.dry_run and policy.action != Action.AUDIT


def _is_deny(mesh: CompiledMesh, rule: CompiledRule) -> bool:
    return mesh.policies[rule.policy].action == Action.DENY


def _find_shadow(
    rule: CompiledRule, policy: CompiledPolicy, rivals: RivalIndex, order: dict[str, int]
) -> CompiledRule | None:
    """The first rule (in policy order) that shadows `rule`, as a pairwise scan would find."""
    position = (order[policy.ref], rule.index)
    for rank, other, rival in rivals.candidates(rule):
        if rank >= position and policy.action != Action.ALLOW:
            return None  # only an earlier rule of the same action can shadow it
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
