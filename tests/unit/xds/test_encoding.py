"""Encoding shares cached parts between resources; the bytes must mean exactly what a plain
encoding of the whole resource means."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshwarden.engine import load
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._encode import ResourceEncoder
from meshwarden.xds._translate import workload_resources

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("example", ["shop", "seed"])
def test_split_encoding_decodes_to_the_same_resource_as_a_plain_encoding(example):
    compiled = load([EXAMPLES / example]).compiled
    assert compiled is not None
    encoder = ResourceEncoder()
    checked = 0
    for ref in compiled.registry.workloads:
        for type_url, configs in workload_resources(compiled, ref, TranslationContext()).items():
            for config in configs:
                name = config.get("name") or config["clusterName"]
                resource = encoder.encode(type_url, name, config)
                message_class = encoder._message_class(type_url)
                plain = bytes(message_class.from_dict(config))
                decoded = message_class.parse(resource.body).to_dict()
                assert decoded == message_class.parse(plain).to_dict(), (ref, name)
                checked += 1
    assert checked >= 5


def test_an_unchanged_resource_is_not_encoded_again():
    compiled = load([EXAMPLES / "shop"]).compiled
    assert compiled is not None
    encoder = ResourceEncoder()
    resources = workload_resources(compiled, "shop/backend-1", TranslationContext())
    first = encoder.encode_all(resources)
    encoded = encoder.encoded
    again = encoder.encode_all(workload_resources(compiled, "shop/backend-1", TranslationContext()))
    assert encoder.encoded == encoded
    assert [r.body for r in again] == [r.body for r in first]
