"""The positioned YAML reader against PyYAML itself (hypothesis): for any YAML that needs none of
the reader's refusals, every value it reads is the value PyYAML's own loader constructs (plain
scalars resolved the same way the first time and every time they repeat), and every key and
value is placed at the line and column where PyYAML's pure-Python composer put the node."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshwarden.engine import Location, read_documents

# plain scalars that PyYAML types as something else than a string, strings that look like them,
# and ordinary policy words; each appears many times in one file, so repeats are read too
WORDS = """yes No on OFF true False ~ null Null 0 -1 +7 0x1F 0o17 017 1_000 1:30:00 3.25 .inf
-.Inf .NaN 1e3 2001-12-14 2001-12-14t21:59:43.10-05:00 = <<x name namespace spiffe://td/ns/a/sa/b
/api/* *.js GET 8080 127.0.0.1/32 o y n ns-1 é #hash 'q' "d" """
SCALARS = [*WORDS.split(), "", "a b", "multi\nline", " lead", "tail ", "a: b", "- x", "x" * 300]
KEYS = ["name", "kind", "spec", "rules", "from", "to", "ports", "on", "yes", "1", "a b", "é"]

values = st.recursive(
    st.sampled_from(SCALARS) | st.integers(-(10**6), 10**6) | st.booleans() | st.none(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=25,
)
styles = st.sampled_from([None, True, False])


def composed(text: str) -> list[tuple[Any, dict[Any, tuple[int, int]], dict[Any, tuple[int, int]]]]:
    """Data, value marks and key marks of each document, from PyYAML's pure-Python composer."""
    loader = yaml.SafeLoader(text)
    found = []
    try:
        while loader.check_node():
            values: dict[Any, tuple[int, int]] = {}
            keys: dict[Any, tuple[int, int]] = {}
            data = _walk(loader, loader.get_node(), (), values, keys)
            found.append((data, values, keys))
    finally:
        loader.dispose()
    return found


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: tuple[Any, ...],
    values: dict[Any, tuple[int, int]],
    keys: dict[Any, tuple[int, int]],
) -> Any:
    values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, item, (*path, i), values, keys) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
            key = key if isinstance(key, str) else str(key)
            keys[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _walk(loader, value_node, (*path, key), values, keys)
        return out
    return loader.construct_object(node)  # type: ignore[no-untyped-call]


def place(location: Location) -> tuple[int, int]:
    return location.line, location.column


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(values, min_size=1, max_size=3), styles, st.booleans())
def test_values_and_positions_are_pythons_own(
    docs: list[Any], flow: bool | None, explicit: bool
) -> None:
    text = yaml.safe_dump_all(
        docs, default_flow_style=flow, explicit_start=explicit, allow_unicode=True, width=60
    )
    documents, problems = read_documents("t.yaml", text)
    assert problems == []
    assert [d.data for d in documents] == list(yaml.load_all(text, Loader=yaml.CSafeLoader))
    expected = composed(text)
    assert [d.data for d in documents] == [data for data, _, _ in expected]
    for document, (_, values, keys) in zip(documents, expected, strict=True):
        assert {p: place(m) for p, m in document.value_marks.items()} == values
        assert {p: place(m) for p, m in document.key_marks.items()} == keys
