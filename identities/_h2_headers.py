"""Header blocks of the agent's local HTTP/2 server, decoded by `hpack` with a bounded dynamic
table (`TABLE_SIZE`, our SETTINGS_HEADER_TABLE_SIZE) and a bounded header list, and a cache of
connections' first header blocks.

The first header block of a connection is decoded against an empty dynamic table, so the headers
it gives and the table it leaves behind are a function of its bytes alone (and of the decoder's
two caps, part of the cache key). A workload's gRPC client sends the same first block on every
connection (grpc-core: the same literals with incremental indexing, in the same order), so
`FIRST_BLOCKS` of them are kept, decoded: a connection whose first block is one of them gets
its headers without running `hpack` (≈ 30 µs a block, a fifth of a first fetch). The table that
block would have left is rebuilt only if the connection sends a second block: the cached block's
bytes are decoded then, by a fresh `hpack` decoder, just before the second block, so every later
block decodes exactly as without the cache. Only blocks that decoded without error, of at most
`FIRST_BLOCK_BYTES` and at most `FIRST_BLOCK_HEADERS` decoded, are kept: the cache holds at most
`FIRST_BLOCKS` × (1 + 4) KiB, and a client sending distinct blocks only evicts (first in, first
out), it never changes what another connection decodes."""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder
from meshwarden.identities._h2_frames import well_formed

TABLE_SIZE = 4096  # the default, never raised
FIRST_BLOCKS = 64
FIRST_BLOCK_BYTES = 1024
FIRST_BLOCK_HEADERS = 4096  # decoded, counted as HPACK does (name + value + 32 per field)

Headers = list[tuple[str, str]]
# (max_header_list, block) -> the block (the key's own bytes, which a connection keeps instead of
# its copy), its headers and whether they are a well-formed request's (`_h2_frames.well_formed`);
# insertion-ordered, the oldest evicted first.
_first_blocks: dict[tuple[int, bytes], tuple[bytes, tuple[tuple[str, str], ...], bool]] = {}


class HeaderDecoder:
    """Decodes one connection's header blocks in order; raises what `hpack.Decoder.decode`
    raises (HPACKError, and ValueError or IndexError on some malformed input)."""

    __slots__ = ("_decoder", "_first", "_max_header_list", "well_formed")

    def __init__(self, max_header_list: int) -> None:
        self._max_header_list = max_header_list
        self._decoder: Decoder | None = None  # made on the first block the cache did not hold
        self._first: bytes | None = None  # a first block taken from the cache, not yet decoded
        self.well_formed: bool | None = None  # of the last block, when the cache knew it

    def decode(self, block: bytes) -> Headers:
        self.well_formed = None
        decoder = self._decoder
        if decoder is None:
            if self._first is None:
                return self._first_block(block)
            decoder = self._new_decoder()
            decoder.decode(self._first)  # decoded without error before, with the same caps
            self._first = None
        return _strings(decoder.decode(block))

    def _first_block(self, block: bytes) -> Headers:
        key = (self._max_header_list, block)
        cached = _first_blocks.get(key)
        if cached is not None:
            self._first, self.well_formed = cached[0], cached[2]
            return list(cached[1])
        headers = _strings(self._new_decoder().decode(block))
        if len(block) <= FIRST_BLOCK_BYTES and _size(headers) <= FIRST_BLOCK_HEADERS:
            if len(_first_blocks) >= FIRST_BLOCKS:
                _first_blocks.pop(next(iter(_first_blocks)), None)
            _first_blocks[key] = (block, tuple(headers), well_formed(headers))
        return headers

    def _new_decoder(self) -> Decoder:
        decoder = self._decoder = Decoder(max_header_list_size=self._max_header_list)
        decoder.max_allowed_table_size = TABLE_SIZE
        return decoder


def _strings(headers: Iterable[tuple[str | bytes, str | bytes]]) -> Headers:
    return [(str(name), str(value)) for name, value in headers]


def _size(headers: Headers) -> int:
    return sum(len(name) + len(value) + 32 for name, value in headers)
