"""What the ADS server serves: per-node snapshots of encoded Envoy resources.

Resources are encoded once (by the translator) and carried as bytes with a content-hash
version, so no stream or push ever re-encodes them. The server depends only on the small
`ConfigWatcher` protocol (go-control-plane's idea), never on how snapshots are produced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# Make-before-break: clusters, then their endpoints, then listeners, then routes.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


@dataclass(frozen=True, slots=True)
class Resource:
    """One encoded resource (the message bytes, not wrapped in Any)."""

    type_url: str
    name: str
    body: bytes
    version: str = ""

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", hashlib.sha256(self.body).hexdigest()[:16])


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one node should have, by type URL and name."""

    resources: Mapping[str, Mapping[str, Resource]] = field(default_factory=dict)
    # type URL → version, computed on first use: every stream and /healthz asks for it
    _versions: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, resources: list[Resource]) -> Snapshot:
        by_type: dict[str, dict[str, Resource]] = {}
        for resource in resources:
            named = by_type.setdefault(resource.type_url, {})
            if resource.name in named:
                raise ValueError(f"duplicate {resource.type_url} resource {resource.name!r}")
            named[resource.name] = resource
        return cls(by_type)

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, {})

    def version(self, type_url: str) -> str:
        """Content hash of all resources of a type: equal content, equal version."""
        version = self._versions.get(type_url)
        if version is None:
            digest = hashlib.sha256()
            for name, resource in sorted(self.of_type(type_url).items()):
                digest.update(f"{name}\0{resource.version}\0".encode())
            version = self._versions[type_url] = digest.hexdigest()[:16]
        return version


class ConfigWatcher(Protocol):
    """The only thing the ADS server knows about where configuration comes from."""

    def snapshot(self, node: str) -> Snapshot | None:
        """The current snapshot for a node key (a workload `ns/name`), None if unknown."""
        ...

    def watch(self, node: str, changed: Callable[[Snapshot], None]) -> Callable[[], None]:
        """Call `changed` with each new snapshot of the node key, on the event loop and inside
        the writer's call (so it must not block or raise); returns the function that stops it."""
        ...
