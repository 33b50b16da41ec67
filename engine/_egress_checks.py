"""Warnings about egress policies: valid, but almost certainly not what their author meant."""

from __future__ import annotations

from meshwarden.engine._diagnostics import Diagnostic, warning
from meshwarden.engine._egress import EgressPolicy
from meshwarden.engine._egress_rules import CompiledDestination
from meshwarden.engine._registry import Registry, Workload
from meshwarden.engine._vocabulary import Action


def egress_warnings(registry: Registry, policies: list[EgressPolicy]) -> list[Diagnostic]:
    found: list[Diagnostic] = _not_held_back(registry, policies)
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


def _not_held_back(registry: Registry, policies: list[EgressPolicy]) -> list[Diagnostic]:
    """A workload placed on a node whose egress is restricted, but whose packets the node's
    filter cannot tell from the host's: no `unix:uid:N` selector (uid 0 is never a key) and no
    address of its own there. What no sidecar carries is then not held back (docs/hosts.md)."""
    restricted = {
        ref for p in policies if not p.dry_run and p.action != Action.AUDIT for ref in p.targets
    }
    default_deny = registry.mesh.spec.default_egress_policy == "deny"
    found = []
    for ref in sorted(registry.workloads):
        workload = registry.workloads[ref]
        nodes = [s.removeprefix("node:") for s in workload.selectors if s.startswith("node:")]
        if (
            not nodes
            or not (default_deny or ref in restricted)
            or _keyed(registry, workload, nodes)
        ):
            continue
        text = (
            f"workload {ref}'s egress is not held back by its node's packet filter: it has "
            "no unix:uid:N selector (other than 0) and no address of its own on the node; "
            "add its uid as a selector"
        )
        found.append(warning(workload.document.at("spec", "selectors"), text))
    return found


def _keyed(registry: Registry, workload: Workload, nodes: list[str]) -> bool:
    if any(uid != "0" for uid in _uids(workload)):
        return True
    shared = {a for node in nodes if node in registry.hosts for a in registry.hosts[node].addresses}
    return any(not a.is_loopback and a not in shared for a in workload.addresses)


def _uids(workload: Workload) -> list[str]:
    prefix = "unix:uid:"
    return [s.removeprefix(prefix) for s in workload.selectors if s.startswith(prefix)]
