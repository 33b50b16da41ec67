"""Who may get which identity: the issuance-authorisation rules over the engine's registry.

Written against a small Protocol (the attributes meshwarden.engine's registry provides), so this
module needs no engine internals. Selectors of a Workload:
- `node:NAME`: only agents attested as node NAME may obtain its SVIDs. A Workload without any
  `node:` selector may be served by every attested node (convenient, but any node can then
  impersonate it; pin production workloads to nodes).
- `unix:...`: on the node, a caller gets the Workload's SVID when all of the Workload's `unix:`
  selectors are among the caller's. A Workload without `unix:` selectors matches no caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities._errors import IssuanceError

NODE_PREFIX = "node:"
UNIX_PREFIX = "unix:"


class RegisteredWorkload(Protocol):
    """What identities needs of a workload: its name, SPIFFE ID and selectors."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def spiffe_id(self) -> SpiffeId: ...
    @property
    def selectors(self) -> tuple[str, ...]: ...


class WorkloadRegistry(Protocol):
    """The source of registered workloads for a trust domain."""

    @property
    def trust_domain(self) -> TrustDomain: ...
    @property
    def workloads(self) -> Iterable[RegisteredWorkload] | Mapping[str, RegisteredWorkload]: ...


def workloads_of(registry: WorkloadRegistry) -> tuple[RegisteredWorkload, ...]:
    """The registry's Workloads in a stable order (namespace, name)."""
    found = registry.workloads
    items = found.values() if isinstance(found, Mapping) else found
    return tuple(sorted(items, key=lambda w: (w.namespace, w.name)))


def may_serve(workload: RegisteredWorkload, node: str) -> bool:
    nodes = {s[len(NODE_PREFIX) :] for s in workload.selectors if s.startswith(NODE_PREFIX)}
    return not nodes or node in nodes


def servable_workloads(registry: WorkloadRegistry, node: str) -> tuple[RegisteredWorkload, ...]:
    return tuple(w for w in workloads_of(registry) if may_serve(w, node))


def authorise_issuance(
    registry: WorkloadRegistry, node: str, spiffe_id: SpiffeId
) -> RegisteredWorkload:
    """The Workload that lets `node` obtain an SVID for `spiffe_id`; raise IssuanceError if none."""
    registered = [w for w in workloads_of(registry) if w.spiffe_id == spiffe_id]
    if not registered:
        raise IssuanceError(f"{spiffe_id} is not the identity of any registered Workload")
    for workload in registered:
        if may_serve(workload, node):
            return workload
    names = ", ".join(f"{w.namespace}/{w.name}" for w in registered)
    raise IssuanceError(f"node {node!r} may not serve {spiffe_id} (Workload {names} is pinned)")


def unix_selectors_of(selectors: Iterable[str]) -> frozenset[str]:
    return frozenset(s for s in selectors if s.startswith(UNIX_PREFIX))


def matches_caller(selectors: Iterable[str], caller: frozenset[str]) -> bool:
    """True when the Workload has unix selectors and all of them are among the caller's."""
    wanted = unix_selectors_of(selectors)
    return bool(wanted) and wanted <= caller
