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
from meshwarden.importers._names import dns_label, joined
from meshwarden.importers._netpol_peers import read_peers
from meshwarden.importers._netpol_ports import PortGroup, RulePorts, grouped, read_ports
from meshwarden.importers._objects import KubeObject
from meshwarden.importers._selectors import Selector, read_selector

_TYPES = ("Ingress", "Egress")


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
        _egress(ctx, fields, selector)


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


def _rules(fields: Fields, key: str) -> list[tuple[str | int, ...]]:
    """The paths of the rules of `spec.<key>` (ingress or egress) that are mappings."""
    paths: list[tuple[str | int, ...]] = []
    for i, _ in enumerate(fields.sequence("spec", key) or []):
        path = ("spec", key, i)
        if fields.mapping(*path) is None and fields.obj.get(*path) is not None:
            fields.fail(path, f"an {key} rule must be a mapping")
            continue
        fields.known(path, ("from" if key == "ingress" else "to", "ports"))
        paths.append(path)
    return paths


def _emit(
    ctx: ImportContext,
    fields: Fields,
    selector: Selector,
    rules: list[dict[str, Any]],
    egress: bool,
) -> None:
    obj = fields.obj
    spec: dict[str, Any] = {"direction": "egress"} if egress else {}
    if not selector.empty:
        spec["selector"] = selector.to_yaml()
    spec["action"] = "ALLOW"
    spec["rules"] = rules
    name = joined(obj.name, "egress") if egress else dns_label(obj.name)
    metadata = {"name": name, "namespace": obj.namespace}
    ctx.emit(obj, {"kind": "AuthorizationPolicy", "metadata": metadata, "spec": spec})


def _ingress(ctx: ImportContext, fields: Fields, selector: Selector, targets: list[Pod]) -> None:
    rules: list[dict[str, Any]] = []
    for path in _rules(fields, "ingress"):
        peers = read_peers(ctx, fields, (*path, "from"), ingress=True)
        operations = _operations(fields, read_ports(fields, (*path, "ports")), targets)
        if peers.sources == [] or operations == []:
            continue  # matches nothing
        rule: dict[str, Any] = {}
        if peers.sources is not None:
            rule["from"] = peers.sources
        if operations is not None:
            rule["to"] = operations
        rules.append(rule)
    _emit(ctx, fields, selector, rules, egress=False)


def _operations(
    fields: Fields, ports: RulePorts | None, targets: list[Pod]
) -> list[dict[str, Any]] | None:
    """Ingress operations: None = every port of every protocol; [] = no port at all. A named
    port is the number the selected pods give it; ports of the policy language apply to every
    selected workload, so pods that give the name different numbers (or lack it) are refused
    rather than given each other's ports."""
    if ports is None:
        return None
    for named in ports.named:
        numbers = {p.ref: named.number_on(p) for p in targets}
        if len(set(numbers.values())) > 1:
            shown = ", ".join(f"{ref}: {n or 'none'}" for ref, n in sorted(numbers.items())[:4])
            fields.fail(
                named.path,
                f"named port {named.name!r} is a different port on the pods this policy selects "
                f"({shown}); give the pods the same port or use port numbers",
            )
        elif numbers and (number := next(iter(numbers.values()))) is not None:
            ports.add(named.transport, number)
    operations = [group.fields() for group in grouped(ports.numbers)]
    return None if {} in operations else operations


def _egress(ctx: ImportContext, fields: Fields, selector: Selector) -> None:
    rules: list[dict[str, Any]] = []
    for path in _rules(fields, "egress"):
        peers = read_peers(ctx, fields, (*path, "to"), ingress=False)
        if peers.sources == []:
            continue
        ports = read_ports(fields, (*path, "ports"))
        if ports is None:
            rules.append({} if peers.sources is None else {"to": peers.sources})
            continue
        for group in grouped(ports.numbers):
            rules.append({**_to(peers.sources), **group.fields()})
        rules.extend(_named_egress(ctx, fields, ports, peers.pods))
    _emit(ctx, fields, selector, rules, egress=True)


def _to(sources: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {} if sources is None else {"to": sources}


def _named_egress(
    ctx: ImportContext, fields: Fields, ports: RulePorts, destinations: tuple[Pod, ...]
) -> list[dict[str, Any]]:
    """A named port in egress is resolved against each destination pod: one rule per number,
    to the identities of the pods that give the name that number (addresses outside the
    mesh have no named ports)."""
    rules = []
    for named in ports.named:
        by_number: dict[int, list[Pod]] = {}
        for pod in destinations:
            number = named.number_on(pod)
            if number is not None:
                by_number.setdefault(number, []).append(pod)
        for number, pods in sorted(by_number.items()):
            what = f"named port {named.name!r} ({number} on these pods)"
            ctx.select(pods, fields.obj.at(*named.path), what)
            identities = sorted({ctx.identity(p) for p in pods})
            group = PortGroup((named.transport,), (number,))
            rules.append({"to": [{"identities": identities}], **group.fields()})
    return rules
