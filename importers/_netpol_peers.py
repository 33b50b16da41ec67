"""NetworkPolicy peers (`from` / `to` entries) as policy-language sources.

podSelector alone: pods of the policy's namespace; namespaceSelector: pods of the namespaces of
the inventory whose labels match (every namespace has `kubernetes.io/metadata.name`); both: the
pods matching the podSelector in those namespaces (AND); several peers: any of them (OR).
An ipBlock matches peers without an identity by address (`ipBlocks` minus `notIpBlocks` for
`except`) and, because identified peers are never matched by address, the workloads whose
addresses it covers by their identities.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from meshwarden.importers._context import ImportContext
from meshwarden.importers._fields import Fields
from meshwarden.importers._inventory import Pod
from meshwarden.importers._selectors import Selector, read_selector

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PeerPath = tuple[str | int, ...]
Sources = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Peers:
    """A rule's peers as sources (`from`) or destinations (`to`) of the policy language, and
    the pods of the inventory they name. `sources` None: any peer; []: none can match."""

    sources: Sources | None
    pods: tuple[Pod, ...]


def read_peers(ctx: ImportContext, fields: Fields, path: PeerPath, ingress: bool) -> Peers:
    """The peers of a rule's `from` (ingress) or `to` (egress) list; absent or empty = any
    peer, every pod of the inventory."""
    entries = fields.sequence(*path)
    if not entries:
        return Peers(None, tuple(ctx.inventory.pods))
    sources: Sources = []
    pods: dict[str, Pod] = {}
    for i, _ in enumerate(entries):
        found, named = _peer(ctx, fields, (*path, i), ingress)
        sources.extend(s for s in found if s not in sources)
        pods.update((p.ref, p) for p in named)
    return Peers(sources, tuple(pods.values()))


def _peer(
    ctx: ImportContext, fields: Fields, path: PeerPath, ingress: bool
) -> tuple[Sources, list[Pod]]:
    if fields.mapping(*path) is None:
        fields.fail(path, "a peer must be a mapping (podSelector, namespaceSelector, ipBlock)")
        return [], []
    fields.known(path, ("podSelector", "namespaceSelector", "ipBlock"))
    keys = ("podSelector", "namespaceSelector", "ipBlock")
    has = {k for k in keys if fields.obj.get(*path, k) is not None}
    if "ipBlock" in has:
        if len(has) > 1:
            fields.fail(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
            return [], []
        return _ip_block(ctx, fields, (*path, "ipBlock"), ingress)
    if fields.obj.get(*path) == {}:
        fields.fail(path, "a peer needs podSelector, namespaceSelector or ipBlock")
        return [], []
    return _selected(ctx, fields, path)


def _selected(ctx: ImportContext, fields: Fields, path: PeerPath) -> tuple[Sources, list[Pod]]:
    pod_selector = Selector()
    if fields.obj.get(*path, "podSelector") is not None:
        found = read_selector(fields, *path, "podSelector")
        if found is None:
            return [], []
        pod_selector = found
    namespaces = [fields.obj.namespace]
    if fields.obj.get(*path, "namespaceSelector") is not None:
        ns_selector = read_selector(fields, *path, "namespaceSelector")
        if ns_selector is None:
            return [], []
        known = ctx.inventory.namespaces
        namespaces = sorted(ns for ns, labels in known.items() if ns_selector.matches(labels))
    pods = [
        p
        for p in ctx.inventory.pods
        if p.namespace in namespaces and pod_selector.matches(p.labels)
    ]
    ctx.select(pods, fields.obj.at(*path), "this peer")
    if not namespaces:
        where = fields.obj.at(*path, "namespaceSelector")
        ctx.note(
            f"{where}: namespaceSelector matches no namespace of the input (Namespace objects "
            "carry the labels; without them a namespace has only kubernetes.io/metadata.name), "
            "so this peer allows nothing"
        )
        return [], []
    if pod_selector.empty:
        return [{"namespaces": namespaces}], pods
    return [{"workloads": {**pod_selector.to_yaml(), "namespaces": namespaces}}], pods


def _ip_block(
    ctx: ImportContext, fields: Fields, path: PeerPath, ingress: bool
) -> tuple[Sources, list[Pod]]:
    fields.known(path, ("cidr", "except"))
    cidr = _network(fields, (*path, "cidr"))
    if cidr is None:
        if fields.obj.get(*path, "cidr") is None:
            fields.fail(path, "ipBlock needs a cidr")
        return [], []
    excepts: list[Network] = []
    for i, _ in enumerate(fields.sequence(*path, "except") or []):
        network = _network(fields, (*path, "except", i))
        if network is None:
            return [], []
        if network.version != cidr.version or not network.subnet_of(cidr):  # type: ignore[arg-type]
            fields.fail((*path, "except", i), f"except {network} is not inside cidr {cidr}")
            return [], []
        excepts.append(network)
    if ingress:
        ctx.mesh["mtls"] = "PERMISSIVE"  # peers without an identity must reach the IP fallback
    fallback: dict[str, Any] = {"ipBlocks": [str(cidr)]}
    if excepts:
        fallback["notIpBlocks"] = [str(n) for n in excepts]
    covered = [p for p in ctx.inventory.pods if _covered(p, cidr, excepts)]
    ctx.select(covered, fields.obj.at(*path), "this ipBlock (by the pods' addresses)")
    identities = sorted({ctx.identity(p) for p in covered})
    return ([{"identities": identities}, fallback] if identities else [fallback]), covered


def _covered(pod: Pod, cidr: Network, excepts: list[Network]) -> bool:
    for text in pod.addresses:
        address = ipaddress.ip_address(text)
        if address in cidr and not any(address in n for n in excepts):
            return True
    return False


def _network(fields: Fields, path: PeerPath) -> Network | None:
    text = fields.string(*path)
    if text is None:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        fields.fail(path, f"{text!r} is not a CIDR")
        return None
