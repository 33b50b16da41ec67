"""The first-header-block cache: a connection decodes every header block exactly as a plain
`hpack` decoder would, whether its first block came from the cache or not, and the cache stays
bounded whatever a client sends."""

from __future__ import annotations

import pytest
from hpack import Decoder, Encoder, HeaderTuple, HPACKError, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st
from meshwarden.identities import _h2_headers
from meshwarden.identities._h2_headers import FIRST_BLOCKS, TABLE_SIZE, HeaderDecoder

# Few names and values, so blocks repeat fields and refer to dynamic-table entries.
_NAMES = st.sampled_from(["x-a", "x-b", "user-agent", ":path", "te", "x-" + "n" * 60])
_VALUES = st.sampled_from(["", "1", "trailers", "grpc-python/1.85", "v" * 200, "é"])
_FIELD = st.tuples(_NAMES, _VALUES, st.booleans())  # (name, value, never indexed)
_BLOCK = st.tuples(
    st.lists(_FIELD, max_size=8),
    st.sampled_from([None, None, None, 0, 64, 256, TABLE_SIZE]),  # a table size update first
    st.booleans(),  # Huffman
)


def _encoded(blocks: list[tuple[list[tuple[str, str, bool]], int | None, bool]]) -> list[bytes]:
    """What one client connection sends: its blocks, from one `hpack.Encoder` (literals with
    incremental indexing, as grpc-core sends them, and never-indexed ones)."""
    encoder, out = Encoder(), []
    for fields, table_size, huffman in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size
        headers = [
            NeverIndexedHeaderTuple(n, v) if never else HeaderTuple(n, v) for n, v, never in fields
        ]
        out.append(encoder.encode(headers, huffman=huffman))
    return out


def _reference(blocks: list[bytes], max_header_list: int) -> list[object]:
    """Each block's headers (or the error's type) from one plain hpack decoder."""
    decoder, results = Decoder(max_header_list_size=max_header_list), []
    decoder.max_allowed_table_size = TABLE_SIZE
    for block in blocks:
        try:
            results.append([(str(n), str(v)) for n, v in decoder.decode(block)])
        except (HPACKError, ValueError, IndexError) as exc:
            results.append(type(exc))
            break  # the connection ends
    return results


def _ours(blocks: list[bytes], max_header_list: int) -> list[object]:
    decoder, results = HeaderDecoder(max_header_list), []
    for block in blocks:
        try:
            results.append(decoder.decode(block))
        except (HPACKError, ValueError, IndexError) as exc:
            results.append(type(exc))
            break
    return results


@settings(max_examples=300, deadline=None)
@given(
    blocks=st.lists(_BLOCK, min_size=1, max_size=5),
    max_header_list=st.sampled_from([300, 16 * 1024]),
)
def test_every_block_decodes_as_without_the_cache(
    blocks: list[tuple[list[tuple[str, str, bool]], int | None, bool]], max_header_list: int
) -> None:
    """Two connections send the same blocks: the second one's first block comes from the cache
    (the first one put it there), and its later blocks, which refer to the dynamic-table entries
    that first block inserted, decode as a plain decoder decodes them."""
    encoded = _encoded(blocks)
    expected = _reference(encoded, max_header_list)
    assert _ours(encoded, max_header_list) == expected  # a miss: decoded, perhaps cached
    assert _ours(encoded, max_header_list) == expected  # a hit when it was cached


@given(first=_BLOCK, second=_BLOCK)
def test_a_cached_first_block_does_not_leak_into_another_connections_table(
    first: tuple[list[tuple[str, str, bool]], int | None, bool],
    second: tuple[list[tuple[str, str, bool]], int | None, bool],
) -> None:
    """Connection A's first block is cached; connection B, whose first block differs, decodes
    its second block (which A's table would resolve differently) as a plain decoder does."""
    a, b = _encoded([first, second]), _encoded([second, first])
    _ours(a, 16 * 1024)
    assert _ours(b, 16 * 1024) == _reference(b, 16 * 1024)


def test_the_cache_stays_bounded_under_distinct_first_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client sending a new first block on each of 1,000 connections fills the cache to its
    bound and no further; blocks over the size cap are never kept."""
    monkeypatch.setattr(_h2_headers, "_first_blocks", {})
    for n in range(1_000):
        HeaderDecoder(16 * 1024).decode(Encoder().encode([("x-n", str(n))]))
    assert len(_h2_headers._first_blocks) == FIRST_BLOCKS
    monkeypatch.setattr(_h2_headers, "_first_blocks", {})
    big = Encoder().encode([("x-big", "v" * 2000)], huffman=False)
    assert HeaderDecoder(16 * 1024).decode(big) == [("x-big", "v" * 2000)]
    assert _h2_headers._first_blocks == {}


def test_a_block_over_a_connections_cap_is_refused_even_when_cached() -> None:
    """A block cached by a connection with a larger header-list cap still raises on one whose
    cap it exceeds, on every such connection."""
    block = Encoder().encode([("x-a", "v" * 400)], huffman=False)
    assert HeaderDecoder(16 * 1024).decode(block) == [("x-a", "v" * 400)]
    for _ in range(2):
        with pytest.raises(HPACKError):
            HeaderDecoder(300).decode(block)
    assert HeaderDecoder(16 * 1024).decode(block) == [("x-a", "v" * 400)]
