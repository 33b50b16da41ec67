"""Configs are written to the wire straight from the descriptors; the bytes must be exactly
those of protobuf's own JSON parser and deterministic serialiser (upb), which the encoder used
before and still uses for whatever the direct writer does not cover."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from meshwarden.engine import load
from meshwarden.xds import TracingTarget, _encode
from meshwarden.xds._codec import EnvoyMessages
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._encode import ResourceEncoder
from meshwarden.xds._json_wire import Unsupported, to_wire
from meshwarden.xds._translate import workload_resources

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
OBSERVED = TranslationContext(
    tracing=TracingTarget("127.0.0.1", 4317, sampling=12.5),
    flow_log_cluster="meshwarden-xds",
    ext_authz_cluster="meshwarden-xds",
    flow_log_allowed_percent=37.5,
)


def upb(full_name: str, config: dict[str, Any]) -> bytes:
    return bytes(EnvoyMessages.parse(full_name, config).SerializeToString(deterministic=True))


def direct(full_name: str, config: dict[str, Any]) -> bytes:
    return to_wire(EnvoyMessages.pool().FindMessageTypeByName(full_name), config)


@pytest.mark.parametrize("example", ["shop", "seed", "shop-hosts"])
def test_every_message_of_the_examples_is_written_as_upb_writes_it(
    example: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = load([EXAMPLES / example]).compiled
    assert compiled is not None
    written: list[tuple[str, dict[str, Any]]] = []
    encode = _encode._message_bytes
    monkeypatch.setattr(
        _encode,
        "_message_bytes",
        lambda name, config: written.append((name, config)) or encode(name, config),
    )
    for context in (TranslationContext(), OBSERVED):
        for ref in sorted(compiled.plans):
            ResourceEncoder().encode_all(workload_resources(compiled, ref, context))
    direct_count = 0
    for full_name, config in written:
        try:
            body = direct(full_name, config)
        except Unsupported:
            continue  # e.g. filter metadata (Struct): the encoder asks ParseDict
        assert body == upb(full_name, config), (full_name, config)
        direct_count += 1
    assert direct_count > 0.9 * len(written) > 0


EDGES = [
    # proto3 defaults without presence are left out; oneof members and wrappers keep them
    ("envoy.config.listener.v3.Listener", {"name": "", "enableReusePort": False}),
    ("envoy.type.matcher.v3.StringMatcher", {"prefix": ""}),
    ("envoy.type.matcher.v3.StringMatcher", {"exact": "é/ü", "ignoreCase": True}),
    ("envoy.config.core.v3.SocketOption", {"level": -1, "name": 0, "intValue": 0}),
    ("envoy.type.v3.Int32Range", {"start": -(2**31), "end": 2**31 - 1}),
    ("envoy.type.v3.Percent", {"value": 0.0}),
    ("envoy.type.v3.Percent", {"value": 12.5}),
    (
        "envoy.config.cluster.v3.Cluster",
        {
            "name": "c",
            "type": "STATIC",
            "connectTimeout": "0.000000001s",
            "lbPolicy": "ROUND_ROBIN",
        },
    ),
    (
        "envoy.config.cluster.v3.Cluster",
        {"connectTimeout": "0s", "perConnectionBufferLimitBytes": 0},
    ),
    ("envoy.config.cluster.v3.Cluster", {"connectTimeout": "315576000000.5s"}),
    (
        "xds.type.matcher.v3.Matcher.MatcherTree.MatchMap",
        {"map": {"b": {}, "": {"action": {"name": "x"}}, "a": {"keepMatching": False}}},
    ),
    (  # upb orders keys by bytes, a key before its own prefixes
        "xds.type.matcher.v3.Matcher.MatcherTree.MatchMap",
        {"map": {k: {} for k in ("b", "a", "ab", "B", "spiffe://x/a", "spiffe://x/a/b")}},
    ),
    (
        "envoy.config.core.v3.TypedExtensionConfig",
        {"name": "n", "typedConfig": {"@type": "type.googleapis.com/envoy.type.v3.Percent"}},
    ),
    ("envoy.type.matcher.v3.ListStringMatcher", {"patterns": [{"exact": "a"}, {"suffix": "b"}]}),
]


@pytest.mark.parametrize(("full_name", "config"), EDGES)
def test_edge_cases_are_written_as_upb_writes_them(full_name: str, config: dict[str, Any]) -> None:
    assert direct(full_name, config) == upb(full_name, config)


@pytest.mark.parametrize(
    "config",
    [
        {"name": "c", "metadata": {"filterMetadata": {"x": {"k": "v"}}}},  # Struct
        {"name": "c", "connectTimeout": "-1s"},
        {"name": "c", "connectTimeout": None},
        {"name": "c", "perConnectionBufferLimitBytes": "12"},  # a number as a string
        {"name": "c", "type": "NO_SUCH_TYPE"},
        {"name": "c", "noSuchField": 1},
        {"name": "c", "alt_stat_name": "a", "altStatName": "b"},
    ],
)
def test_what_the_writer_does_not_cover_is_left_to_parse_dict(config: dict[str, Any]) -> None:
    with pytest.raises(Unsupported):
        direct("envoy.config.cluster.v3.Cluster", config)


def test_a_bad_config_still_fails_with_parse_dicts_error_through_the_encoder() -> None:
    with pytest.raises(json_format.ParseError, match="noSuchField"):
        ResourceEncoder().encode(
            "type.googleapis.com/envoy.config.cluster.v3.Cluster", "c", {"noSuchField": 1}
        )
