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
from meshwarden.importers._netpol_named import POD_LABEL, resolution_groups, resolved
from meshwarden.importers._netpol_peers import Peers, read_peers
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
    name: str | None = None,
) -> None:
    obj = fields.obj
    spec: dict[str, Any] = {"direction": "egress"} if egress else {}
    if not selector.empty:
        spec["selector"] = selector.to_yaml()
    spec["action"] = "ALLOW"
    spec["rules"] = rules
    name = name or (joined(obj.name, "egress") if egress else dns_label(obj.name))
    metadata = {"name": name, "namespace": obj.namespace}
    ctx.emit(obj, {"kind": "AuthorizationPolicy", "metadata": metadata, "spec": spec})


def _ingress(ctx: ImportContext, fields: Fields, selector: Selector, targets: list[Pod]) -> None:
    """One ALLOW policy; or, when a named port is a different number on some selected pods,
    one per group of pods that resolve every named port alike (see `_netpol_named`)."""
    parsed = [
        (
            read_peers(ctx, fields, (*path, "from"), ingress=True),
            read_ports(fields, (*path, "ports")),
        )
        for path in _rules(fields, "ingress")
    ]
    groups = resolution_groups([ports for _, ports in parsed], targets)
    if len(groups) <= 1:
        _emit(ctx, fields, selector, _ingress_rules(parsed, targets), egress=False)
        return
    names = []
    for i, pods in enumerate(groups):
        name = joined(fields.obj.name, str(i + 1))
        names.append(f"{name} ({', '.join(p.name for p in pods)})")
        for pod in pods:
            ctx.added_labels.setdefault(pod.ref, {})[POD_LABEL] = pod.name
        narrowed = selector.narrowed(POD_LABEL, [p.name for p in pods])
        _emit(ctx, fields, narrowed, _ingress_rules(parsed, pods), egress=False, name=name)
    ctx.note(
        f"{fields.obj.origin}: a named port is a different number on the pods it selects; "
        f"written as {', '.join(names)}, each selecting its pods by the label {POD_LABEL}"
    )


def _ingress_rules(parsed: list[tuple[Peers, RulePorts | None]], pods: list[Pod]) -> list[Any]:
    rules: list[dict[str, Any]] = []
    for peers, ports in parsed:
        operations = _operations(ports, pods)
        if peers.sources == [] or operations == []:
            continue  # matches nothing
        rule: dict[str, Any] = {}
        if peers.sources is not None:
            rule["from"] = peers.sources
        if operations is not None:
            rule["to"] = operations
        rules.append(rule)
    return rules


def _operations(ports: RulePorts | None, pods: list[Pod]) -> list[dict[str, Any]] | None:
    """Ingress operations for `pods`, which resolve every named port alike: None = every port
    of every protocol; [] = no port at all (a named port none of them has opens nothing)."""
    if ports is None:
        return None
    operations = [group.fields() for group in grouped(resolved(ports, pods))]
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
