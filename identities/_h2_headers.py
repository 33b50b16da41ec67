"""Header blocks of the agent's local HTTP/2 server, decoded by `hpack` with a bounded dynamic
table (`TABLE_SIZE`, our SETTINGS_HEADER_TABLE_SIZE) and a bounded header list."""

from __future__ import annotations

from hpack import Decoder

TABLE_SIZE = 4096  # the default, never raised


class HeaderDecoder:
    """Decodes one connection's header blocks in order; raises what `hpack.Decoder.decode`
    raises (HPACKError, and ValueError or IndexError on some malformed input)."""

    def __init__(self, max_header_list: int) -> None:
        self._decoder = Decoder(max_header_list_size=max_header_list)
        self._decoder.max_allowed_table_size = TABLE_SIZE

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        return [(str(name), str(value)) for name, value in self._decoder.decode(block)]
