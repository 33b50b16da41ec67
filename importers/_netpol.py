"""NetworkPolicy (networking.k8s.io/v1) as ALLOW AuthorizationPolicies, with its exact meaning.

A pod that a NetworkPolicy selects for a direction is isolated in that direction: only what one
of the rules of the policies selecting it allows gets through (policies are unioned). That is
the policy language's ALLOW: once an enforced ALLOW policy selects a workload, a request is
allowed iff one of their rules matches. So each NetworkPolicy becomes one ALLOW policy with the
same selector, one rule per ingress rule; `ingress: []` (or none) becomes `rules: []`, which
matches nothing, and `ingress: [{}]` becomes `rules: [{}]`, which matches everything.
"""

from __future__ import annotations

from typing import Any

from meshwarden.importers._context import ROOT_NAMESPACE, ImportContext
from meshwarden.importers._fields import Fields
from meshwarden.importers._inventory import Pod
from meshwarden.importers._names import dns_label
from meshwarden.importers._netpol_peers import read_peers
from meshwarden.importers._objects import KubeObject
from meshwarden.importers._selectors import Selector, read_selector

_TYPES = ("Ingress", "Egress")
_L4 = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


def translate_network_policy(obj: KubeObject, ctx: ImportContext) -> None:
    """Translate one NetworkPolicy (see the module docstring)."""
    fields = Fields(obj, ctx.problems)
    if obj.version != "v1":
        fields.fail(("apiVersion",), f"NetworkPolicy {obj.api_version} is not supported; use v1")
        return
    fields.known((), ("apiVersion", "kind", "metadata", "spec", "status"))
    fields.known(("spec",), ("podSelector", "policyTypes", "ingress", "egress"))
    if fields.mapping("spec", "podSelector") is None:
        fields.fail(("spec",), "spec.podSelector is required ({} selects every pod)")
        return
    if obj.namespace == ctx.mesh.get("rootNamespace", ROOT_NAMESPACE):
        where = ("metadata", "namespace")
        fields.fail(
            where,
            f"{obj.namespace} is the Mesh's root namespace, whose policies apply to every workload",
        )
        return
    selector = read_selector(fields, "spec", "podSelector")
    types = _policy_types(fields)
    if selector is None or types is None:
        return
    targets = [p for p in ctx.inventory.pods_in(obj.namespace) if selector.matches(p.labels)]
    if "Ingress" in types:
        _ingress(ctx, fields, selector, targets)
    if "Egress" in types:
        fields.fail(("spec", "policyTypes"), "Egress NetworkPolicies are not supported yet")


def _policy_types(fields: Fields) -> list[str] | None:
    """policyTypes as the API server defaults it: Ingress always, Egress when egress rules
    are given. Rules of a direction not listed are an error (Kubernetes ignores them)."""
    given = fields.sequence("spec", "policyTypes")
    if given is None:
        return ["Ingress", *(["Egress"] if fields.obj.get("spec", "egress") else [])]
    for i, value in enumerate(given):
        if value not in _TYPES:
            fields.fail(
                ("spec", "policyTypes", i), f"policy type {value!r} is not Ingress or Egress"
            )
            return None
    for direction, key in (("Ingress", "ingress"), ("Egress", "egress")):
        if fields.obj.get("spec", key) and direction not in given:
            where = ("spec", key)
            fields.fail(where, f"{key} rules without {direction} in policyTypes have no effect")
            return None
    return list(given)


def _ingress(ctx: ImportContext, fields: Fields, selector: Selector, targets: list[Pod]) -> None:
    obj = fields.obj
    rules: list[dict[str, Any]] = []
    for i, _ in enumerate(fields.sequence("spec", "ingress") or []):
        path = ("spec", "ingress", i)
        if fields.mapping(*path) is None and obj.get(*path) is not None:
            fields.fail(path, "an ingress rule must be a mapping (from, ports)")
            continue
        fields.known(path, ("from", "ports"))
        rule = _rule(ctx, fields, path, "from", targets)
        if rule is not None:
            rules.append(rule)
    spec: dict[str, Any] = {}
    if not selector.empty:
        spec["selector"] = selector.to_yaml()
    spec["action"] = "ALLOW"
    spec["rules"] = rules
    metadata = {"name": dns_label(obj.name), "namespace": obj.namespace}
    ctx.emit(obj, {"kind": "AuthorizationPolicy", "metadata": metadata, "spec": spec})


def _rule(
    ctx: ImportContext,
    fields: Fields,
    path: tuple[str | int, ...],
    peers_key: str,
    targets: list[Pod],
) -> dict[str, Any] | None:
    """One rule in the policy language, or None when it can match nothing."""
    sources = read_peers(ctx, fields, (*path, peers_key))
    operations = read_ports(fields, (*path, "ports"), targets)
    if sources == [] or operations == []:
        return None
    rule: dict[str, Any] = {}
    if sources is not None:
        rule["from"] = sources
    if operations is not None:
        rule["to"] = operations
    return rule


def read_ports(
    fields: Fields, path: tuple[str | int, ...], targets: list[Pod]
) -> list[dict[str, Any]] | None:
    """A rule's `ports` as operations: None = any port of any protocol; [] = no port."""
    entries = fields.sequence(*path)
    if not entries:
        return None
    ports: list[int | str] = []
    any_port = False
    for i, _ in enumerate(entries):
        entry = _port_entry(fields, (*path, i), targets)
        if entry is True:
            any_port = True
        elif entry:
            ports.extend(p for p in entry if p not in ports)
    if any_port:
        return [{}]
    return [{"ports": ports}] if ports else []


def _port_entry(
    fields: Fields, path: tuple[str | int, ...], targets: list[Pod]
) -> list[int | str] | bool:
    """The ports of one entry; True for every port (protocol-only entry)."""
    if fields.mapping(*path) is None:
        fields.fail(path, "a port entry must be a mapping (protocol, port, endPort)")
        return False
    fields.known(path, ("protocol", "port", "endPort"))
    protocol = fields.string(*path, "protocol") or "TCP"
    if protocol not in _L4:
        fields.fail((*path, "protocol"), f"protocol {protocol!r} is not TCP, UDP or SCTP")
        return False
    if protocol != "TCP":
        fields.fail((*path, "protocol"), f"{protocol} ports are not supported yet")
        return False
    port = fields.port(*path, "port")
    end = fields.integer(*path, "endPort")
    if port is None:
        if end is not None:
            fields.fail((*path, "endPort"), "endPort needs a numeric port")
        return fields.obj.get(*path, "port") is None
    if isinstance(port, str):
        if end is not None:
            fields.fail((*path, "endPort"), "endPort cannot be used with a named port")
            return False
        return _named(fields, (*path, "port"), port, protocol, targets)
    if end is None:
        return [port]
    if not port <= end <= 65535:
        fields.fail((*path, "endPort"), f"endPort {end} must be between port {port} and 65535")
        return False
    return [f"{port}-{end}"] if end > port else [port]


def _named(
    fields: Fields, path: tuple[str | int, ...], name: str, protocol: str, targets: list[Pod]
) -> list[int | str]:
    """A named port resolved against each pod the policy selects. The policy language's ports
    are numbers shared by every selected workload, so pods that resolve the name differently
    cannot be expressed without widening: that is an error."""
    numbers = {p.ref: p.named_port(name, protocol) for p in targets}
    distinct = set(numbers.values())
    if len(distinct) > 1:
        shown = ", ".join(f"{ref}: {n or 'none'}" for ref, n in sorted(numbers.items())[:4])
        fields.fail(
            path,
            f"named port {name!r} is a different port on the pods this policy selects "
            f"({shown}); give the pods the same port or use port numbers",
        )
        return []
    number = next(iter(distinct), None)
    return [number] if number is not None else []
