"""JSON-shaped Envoy configs → protobuf bytes, encoded once per distinct content.

envoy-data-plane's encoder is pure Python and slow, so each resource is encoded once and the
bytes are cached by the hash of its canonical JSON; a push or a new stream reuses them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections import OrderedDict
from collections.abc import Callable
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
    "envoy.extensions.upstreams.http.v3",
    "envoy.extensions.filters.http.lua.v3",
    "envoy.config.trace.v3",
    "envoy.extensions.access_loggers.grpc.v3",
    "envoy.extensions.filters.http.ext_authz.v3",
    "envoy.extensions.filters.network.ext_authz.v3",
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
            _cache_betterproto_validators()
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
            body = self._encode_message(type_url, config)
            self.encoded += 1
            self._cache[digest] = body
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(digest)
        return Resource(type_url, name, body, digest[:16])

    def _encode_message(self, type_url: str, config: dict[str, Any]) -> bytes:
        """Encode with the parts replicas share cached on their own: a listener's filter chains
        (with their HCM, RBAC and TLS configs) and listener filters are encoded once per content
        and appended as raw repeated fields (protobuf messages concatenate), so a listener that
        differs only in its name and address costs one small encode."""
        if type_url == LISTENER:
            outer = {k: v for k, v in config.items() if k not in _LISTENER_PARTS}
            body = self._plain(type_url, outer)
            for key, (number, class_name) in _LISTENER_PARTS.items():
                for part in config.get(key, ()):
                    body += _length_delimited(number, self._part(class_name, part))
            return body
        return self._plain(type_url, config)

    def _plain(self, type_url: str, config: dict[str, Any]) -> bytes:
        return self._with_typed_configs(self._message_class(type_url), config)

    def _part(self, class_name: str, config: dict[str, Any]) -> bytes:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"))
        key = f"{class_name}:" + hashlib.sha256(text.encode()).hexdigest()
        body = self._cache.get(key)
        if body is None:
            module = importlib.import_module("envoy_data_plane.envoy.config.listener.v3")
            body = self._with_typed_configs(getattr(module, class_name), config)
            self._cache[key] = body
        return body

    def _with_typed_configs(self, message_class: Any, config: dict[str, Any]) -> bytes:
        """Encode with every embedded `typedConfig` (filters, transport sockets) encoded on its
        own and cached (replicas share their HCM and RBAC bytes)."""
        embedded: list[tuple[Holder, dict[str, Any]]] = []
        outer = _without_typed_configs(config, embedded)
        message = message_class.from_dict(outer)
        for holder, typed in embedded:
            holder(message).typed_config = self._any(typed)
        return bytes(message)

    def _any(self, typed: dict[str, Any]) -> Any:
        from envoy_data_plane.google.protobuf import Any as AnyMessage

        text = json.dumps(typed, sort_keys=True, separators=(",", ":"))
        key = "any:" + hashlib.sha256(text.encode()).hexdigest()
        value = self._cache.get(key)
        if value is None:
            value = AnyMessage.from_dict(typed).value
            self._cache[key] = value
        return AnyMessage(type_url=typed["@type"], value=value)

    def encode_all(self, resources: dict[str, list[dict[str, Any]]]) -> list[Resource]:
        out = []
        for type_url, configs in resources.items():
            for config in configs:
                name = config.get("name") or config["clusterName"]
                out.append(self.encode(type_url, name, config))
        return out


Holder = Callable[[Any], Any]  # message → the sub-message whose `typed_config` to set


def _filter_chain(index: int) -> Holder:
    return lambda message: message.filter_chains[index]


def _chain_filter(get_chain: Holder, index: int) -> Holder:
    return lambda message: get_chain(message).filters[index]


# Listener fields encoded separately: JSON name → (field number, message class).
_LISTENER_PARTS = {"filterChains": (3, "FilterChain"), "listenerFilters": (9, "ListenerFilter")}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, body: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def _without_typed_configs(
    config: dict[str, Any], embedded: list[tuple[Holder, dict[str, Any]]]
) -> dict[str, Any]:
    """A copy of a Listener, FilterChain, ListenerFilter or Cluster config without the
    `typedConfig` of its filters and transport sockets; `embedded` gets (the holder of each —
    a function from the message to the sub-message carrying it —, its config)."""
    if "filters" in config:  # a FilterChain
        return _chain_without_typed_configs(config, embedded, lambda m: m)
    outer = dict(config)
    if "filterChains" in config:
        outer["filterChains"] = [
            _chain_without_typed_configs(chain, embedded, _filter_chain(i))
            for i, chain in enumerate(config["filterChains"])
        ]
    socket = config.get("transportSocket")
    if socket and "typedConfig" in socket:
        embedded.append((lambda m: m.transport_socket, socket["typedConfig"]))
        outer["transportSocket"] = {"name": socket["name"]}
    if "typedConfig" in config:  # a ListenerFilter
        embedded.append((lambda m: m, config["typedConfig"]))
        del outer["typedConfig"]
    return outer


def _chain_without_typed_configs(
    chain: dict[str, Any], embedded: list[tuple[Holder, dict[str, Any]]], get_chain: Holder
) -> dict[str, Any]:
    chain = dict(chain)
    filters = []
    for j, item in enumerate(chain.get("filters", [])):
        if "typedConfig" in item:
            embedded.append((_chain_filter(get_chain, j), item["typedConfig"]))
            item = {k: v for k, v in item.items() if k != "typedConfig"}
        filters.append(item)
    chain["filters"] = filters
    socket = chain.get("transportSocket")
    if socket and "typedConfig" in socket:
        embedded.append((lambda m: get_chain(m).transport_socket, socket["typedConfig"]))
        chain["transportSocket"] = {"name": socket["name"]}
    return chain


def _cache_betterproto_validators() -> None:
    """betterproto2 re-validates every message it serialises — the same check, but it builds a
    new pydantic `SchemaValidator` from the class schema each time, which was ~30 % of encoding.
    Keep the validation, build each class's validator once."""
    import betterproto2
    import pydantic_core

    if getattr(betterproto2.Message._validate, "_meshwarden_cached", False):
        return
    validators: dict[type, Any] = {}

    def validate(self: Any) -> None:
        cls = type(self)
        validator = validators.get(cls)
        if validator is None:
            validator = validators[cls] = pydantic_core.SchemaValidator(
                cls.__pydantic_core_schema__
            )
        fields = self.__dict__.copy()
        del fields["_unknown_fields"]
        validator.validate_python(fields)

    validate._meshwarden_cached = True  # type: ignore[attr-defined]
    betterproto2.Message._validate = validate  # type: ignore[method-assign]
