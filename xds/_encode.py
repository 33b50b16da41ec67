"""JSON-shaped Envoy configs → protobuf bytes, encoded once per distinct content.

envoy-data-plane's encoder is pure Python and slow, so each resource is encoded once and the
bytes are cached by the hash of its canonical JSON; a push or a new stream reuses them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections import OrderedDict
from typing import Any

from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource

_MESSAGES = {
    CLUSTER: ("envoy_data_plane.envoy.config.cluster.v3", "Cluster"),
    ENDPOINT: ("envoy_data_plane.envoy.config.endpoint.v3", "ClusterLoadAssignment"),
    LISTENER: ("envoy_data_plane.envoy.config.listener.v3", "Listener"),
    ROUTE: ("envoy_data_plane.envoy.config.route.v3", "RouteConfiguration"),
}
# Modules whose messages appear inside `Any` fields of our configs: importing them registers
# their types so `from_dict` can resolve "@type".
_TYPED_CONFIG_MODULES = (
    "envoy.config.rbac.v3",
    "envoy.extensions.filters.http.rbac.v3",
    "envoy.extensions.filters.network.rbac.v3",
    "envoy.extensions.filters.http.jwt_authn.v3",
    "envoy.extensions.filters.http.router.v3",
    "envoy.extensions.filters.network.http_connection_manager.v3",
    "envoy.extensions.filters.network.tcp_proxy.v3",
    "envoy.extensions.filters.listener.tls_inspector.v3",
    "envoy.extensions.transport_sockets.tls.v3",
    "envoy.extensions.matching.common_inputs.ssl.v3",
    "envoy.extensions.matching.common_inputs.network.v3",
    "envoy.extensions.matching.input_matchers.ip.v3",
    "envoy.extensions.matching.input_matchers.metadata.v3",
    "envoy.type.matcher.v3",
)


class ResourceEncoder:
    """Encodes resources, remembering the bytes of the last `capacity` distinct contents."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._capacity = capacity
        self._classes: dict[str, Any] = {}
        self.encoded = 0

    def _message_class(self, type_url: str) -> Any:
        if not self._classes:
            for module in _TYPED_CONFIG_MODULES:
                importlib.import_module("envoy_data_plane." + module)
        if type_url not in self._classes:
            module, name = _MESSAGES[type_url]
            self._classes[type_url] = getattr(importlib.import_module(module), name)
        return self._classes[type_url]

    def encode(self, type_url: str, name: str, config: dict[str, Any]) -> Resource:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(type_url.encode() + b"\0" + text.encode()).hexdigest()
        body = self._cache.get(digest)
        if body is None:
            body = bytes(self._message_class(type_url).from_dict(config))
            self.encoded += 1
            self._cache[digest] = body
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(digest)
        return Resource(type_url, name, body, digest[:16])

    def encode_all(self, resources: dict[str, list[dict[str, Any]]]) -> list[Resource]:
        out = []
        for type_url, configs in resources.items():
            for config in configs:
                name = config.get("name") or config["clusterName"]
                out.append(self.encode(type_url, name, config))
        return out
