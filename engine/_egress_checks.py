"""Warnings about egress policies: valid, but almost certainly not what their author meant."""

from __future__ import annotations

from meshwarden.engine._diagnostics import Diagnostic, warning
from meshwarden.engine._egress import EgressPolicy
from meshwarden.engine._egress_rules import CompiledDestination
from meshwarden.engine._registry import Registry
from meshwarden.engine._vocabulary import Action


def egress_warnings(registry: Registry, policies: list[EgressPolicy]) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for policy in sorted(policies, key=lambda p: p.ref):
        doc = policy.document
        if not policy.targets:
            scope = (
                "in the mesh"
                if registry.is_root(policy.namespace)
                else (f"in namespace {policy.namespace}")
            )
            text = f"egress policy {policy.ref} selects no source workload {scope}"
            found.append(warning(doc.at("spec", "selector"), text))
        if not policy.rules and policy.action != Action.ALLOW:
            text = f"{policy.action} egress policy {policy.ref} has no rules, so it matches nothing"
            found.append(warning(doc.at("spec"), text))
        for rule in policy.rules:
            for k, dest in enumerate(rule.destinations or ()):
                reason = _never_matches(dest)
                if reason:
                    where = doc.at("spec", "rules", rule.index, "to", k)
                    text = f"rule {rule.index} of {policy.ref} can never match destination {k}"
                    found.append(warning(where, f"{text}: {reason}"))
    return found


def _never_matches(dest: CompiledDestination) -> str:
    identity = any(
        f is not None
        for f in (dest.identities, dest.not_identities, dest.workloads, dest.namespaces)
    )
    if identity and (dest.ip_blocks is not None or dest.not_ip_blocks is not None):
        return (
            "it combines identity fields (mesh workloads) with ipBlocks/notIpBlocks "
            "(addresses outside the mesh)"
        )
    if dest.workloads is not None and not dest.workloads:
        return "its workloads selector matches no workload"
    return ""
