"""JSON-shaped Envoy configs → protobuf bytes with protobuf's upb codec.

The messages are those of Envoy's API (the descriptors in `meshwarden.protos`' envoy_api.binpb,
loaded into a private pool so they never clash with other protobuf modules in the process).
The configs are proto3 JSON (camelCase names, `@type` in `Any`); an unknown field or a wrong
value raises `ParseError` naming its path. Encoding is deterministic: equal configs, equal bytes.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

__all__ = ["EnvoyMessages"]

_DESCRIPTORS = "envoy_api.binpb"


class EnvoyMessages:
    """The Envoy API's message classes, loaded once per process on first use."""

    _pool: descriptor_pool.DescriptorPool | None = None
    _lock = threading.Lock()

    @classmethod
    def pool(cls) -> descriptor_pool.DescriptorPool:
        with cls._lock:
            if cls._pool is None:
                data = resources.files("meshwarden.protos").joinpath(_DESCRIPTORS).read_bytes()
                files = descriptor_pb2.FileDescriptorSet.FromString(data)
                pool = descriptor_pool.DescriptorPool()
                for file in files.file:  # in dependency order
                    pool.AddSerializedFile(file.SerializeToString())
                cls._pool = pool
            return cls._pool

    @classmethod
    def message_class(cls, full_name: str) -> Any:
        """The message class of e.g. `envoy.config.listener.v3.Listener`."""
        descriptor = cls.pool().FindMessageTypeByName(full_name)
        return message_factory.GetMessageClass(descriptor)

    @classmethod
    def parse(cls, full_name: str, config: dict[str, Any]) -> Any:
        """The message `full_name` described by `config` (proto3 JSON)."""
        message = cls.message_class(full_name)()
        return json_format.ParseDict(config, message, descriptor_pool=cls.pool())

    @classmethod
    def encode(cls, full_name: str, config: dict[str, Any]) -> bytes:
        """The wire bytes of the message `full_name` described by `config`."""
        return bytes(cls.parse(full_name, config).SerializeToString(deterministic=True))

    @classmethod
    def decode(cls, full_name: str, body: bytes) -> dict[str, Any]:
        """`body` as proto3 JSON (for tests and diagnostics)."""
        message = cls.message_class(full_name).FromString(body)
        return dict(json_format.MessageToDict(message, descriptor_pool=cls.pool()))
