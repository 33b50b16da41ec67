"""JSON-shaped Envoy configs → protobuf bytes, each distinct part encoded once.

A resource is cut into the parts that replicas and unchanged resources share — a listener's
filter chains and listener filters, a chain's filters and transport socket, an HTTP connection
manager's HTTP filters (RBAC, JWT, ext_authz, Lua), every embedded `typedConfig` — and each part
is encoded on its own and cached by the hash of its content; the message's own remaining fields
are one more part. A message's bytes are its parts' bytes concatenated (protobuf fields may come
in any order; repeated items concatenate). So a mesh-wide policy change re-encodes each distinct
RBAC filter once, and per workload only the small envelopes around it. A part's key is computed
bottom-up (its own fields' serialised content and its children's keys), so each config is
serialised once. The codec is protobuf's upb (`_codec`).

A `SharedConfig` is a part that many resources hold as the very same object (the inbound RBAC
filters of workloads with equal plans): it is encoded once and keeps its bytes, so the other
resources holding it spend neither a serialisation nor a hash on it.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections import OrderedDict
from typing import Any

from meshwarden.xds._codec import EnvoyMessages
from meshwarden.xds._json_wire import Unsupported, to_wire
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource
from meshwarden.xds._wire import length_delimited

_MESSAGES = {
    CLUSTER: "envoy.config.cluster.v3.Cluster",
    ENDPOINT: "envoy.config.endpoint.v3.ClusterLoadAssignment",
    LISTENER: "envoy.config.listener.v3.Listener",
    ROUTE: "envoy.config.route.v3.RouteConfiguration",
}
# Fields (JSON names) encoded as parts of their own wherever a message has them.
_PART_FIELDS = frozenset(
    {"filterChains", "listenerFilters", "filters", "httpFilters", "transportSocket", "typedConfig"}
)
_ANY = "google.protobuf.Any"


class SharedConfig(dict[str, Any]):
    """A JSON-shaped part that many resources share as one object; never mutated, so the
    encoder keeps its bytes on it. Equal to (and pickled, copied as) a plain dict."""

    __slots__ = ("encoded",)

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.encoded: tuple[str, bytes, bytes] | None = None  # (message type, key, bytes)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a SharedConfig is shared by many resources: copy it to change it")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


def _content(config: Any) -> bytes:
    """A cache key's text for a JSON-shaped config: equal for equal configs built the same way
    (the translator builds them deterministically). pickle, 2.6× faster than canonical JSON."""
    return pickle.dumps(config, protocol=5)


def _digest(*pieces: bytes) -> bytes:
    return hashlib.sha256(b"\0".join(pieces)).digest()


class ResourceEncoder:
    """Encodes resources, remembering the bytes of the last `capacity` distinct parts."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._capacity = capacity
        self.encoded = 0  # messages encoded (not found in the cache)

    def encode(self, type_url: str, name: str, config: dict[str, Any]) -> Resource:
        _, body = self._part(_MESSAGES[type_url], config)
        return Resource(type_url, name, body)  # versioned by its bytes: equal on every replica

    def encode_all(self, resources: dict[str, list[dict[str, Any]]]) -> list[Resource]:
        out = []
        for type_url, configs in resources.items():
            for config in configs:
                name = config.get("name") or config["clusterName"]
                out.append(self.encode(type_url, name, config))
        return out

    def _part(self, full_name: str, config: dict[str, Any]) -> tuple[bytes, bytes]:
        """(content key, bytes) of the message `full_name` described by `config`."""
        if full_name == _ANY:
            return self._any(config)
        fields = _part_fields(full_name)
        own = {}
        keys, parts = [], []  # of each child part, in order (tagged with its field number)
        for name, value in config.items():
            field = fields.get(name)
            if field is None:
                own[name] = value
                continue
            number, item_name = field
            for item in value if isinstance(value, list) else [value]:
                if type(item) is SharedConfig:
                    key, part = self._shared(item_name, item)
                else:
                    key, part = self._part(item_name, item)
                keys.append(key)
                parts.append(length_delimited(number, part))
        own_key = _digest(full_name.encode(), _content(own))
        body = self._cache.get(own_key)
        if body is None:
            body = _message_bytes(full_name, own) if own else b""
            self.encoded += 1
            self._remember(own_key, body)
        else:
            self._cache.move_to_end(own_key)
        return _digest(own_key, *keys), body + b"".join(parts)

    def _shared(self, full_name: str, config: SharedConfig) -> tuple[bytes, bytes]:
        found = config.encoded
        if found is None or found[0] != full_name:
            key, body = self._part(full_name, config)
            config.encoded = found = (full_name, key, body)
        return found[1], found[2]

    def _any(self, typed: dict[str, Any]) -> tuple[bytes, bytes]:
        """An `Any`: its `@type` and the bytes of the message it names, a part of its own."""
        type_url = typed["@type"]
        name = type_url.rsplit("/", 1)[-1]
        if name.startswith("google.protobuf."):  # a well-known type: JSON {"@type", "value"}
            body = EnvoyMessages.encode(_ANY, typed)
            return _digest(_ANY.encode(), _content(typed)), body
        key, value = self._part(name, {k: v for k, v in typed.items() if k != "@type"})
        body = length_delimited(1, type_url.encode()) + length_delimited(2, value)
        return _digest(type_url.encode(), key), body

    def _remember(self, key: bytes, body: bytes) -> None:
        self._cache[key] = body
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)


def _message_bytes(full_name: str, config: dict[str, Any]) -> bytes:
    """Written from the descriptors (`_json_wire`), or by ParseDict where that cannot (which
    also names what is wrong in a bad config)."""
    try:
        return to_wire(_descriptor(full_name), config)
    except Unsupported:
        return EnvoyMessages.encode(full_name, config)


@functools.cache
def _descriptor(full_name: str) -> Any:
    return EnvoyMessages.pool().FindMessageTypeByName(full_name)


@functools.cache
def _part_fields(full_name: str) -> dict[str, tuple[int, str]]:
    """The message's fields encoded as parts: JSON name → (field number, message type)."""
    fields = EnvoyMessages.message_class(full_name).DESCRIPTOR.fields_by_camelcase_name
    return {
        name: (field.number, field.message_type.full_name)
        for name, field in fields.items()
        if name in _PART_FIELDS and field.message_type is not None
    }
