"""HTTP/2 (RFC 9113) wire pieces for the agent's local gRPC server: frame types, flags, error
codes, settings, frame serialisation, the events `_h2_server.H2Server` reports, and HPACK
literal blocks for the server's own headers (RFC 7541 "literal header field without indexing —
new name", never Huffman-coded: no dynamic-table state on our side)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpack.hpack import encode_integer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">IBI")  # 24-bit length and type (in 4 bytes), flags, stream id

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
MIN_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT = 16_384, 2**24 - 1


_CONNECTION_HEADERS = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
)


class H2Error(Exception):
    """A connection error (RFC 9113 §5.4.1): the connection ends with GOAWAY `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    payload = b"".join(struct.pack(">HI", key, value) for key, value in settings.items())
    return frame(SETTINGS, 0, 0, payload)


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def literal(name: bytes, value: bytes) -> bytes:
    """One header field as an HPACK literal without indexing, its name a new literal."""
    return (
        b"\x00"
        + bytes(encode_integer(len(name), 7))
        + name
        + bytes(encode_integer(len(value), 7))
        + value
    )


def table_size_update(size: int) -> bytes:
    """The dynamic table size update that starts a block after the peer lowered
    SETTINGS_HEADER_TABLE_SIZE (RFC 7541 §4.2)."""
    prefix = encode_integer(size, 5)
    prefix[0] |= 0x20
    return bytes(prefix)


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new stream's request headers (names and values decoded as UTF-8, in order)."""

    stream_id: int
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Request body bytes; the caller calls `H2Server.consumed(stream_id, len(data))` once it
    has taken them, which reopens the peer's window."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The client half-closed the stream: no more request bytes."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone: reset by the client (`by_peer`), or by this server for a stream
    error (the RST_STREAM is already queued)."""

    stream_id: int
    code: int
    by_peer: bool


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The peer opened a window: queued response bytes may have gone out."""


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """No more streams on this connection: the client sent GOAWAY (`by_peer`), or this server
    did for a connection error (queued; every stream is over). `reason` says why."""

    code: int
    by_peer: bool
    reason: str


Event = RequestReceived | DataReceived | StreamEnded | StreamReset | WindowOpened | ConnectionEnded


def unpadded(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise H2Error(PROTOCOL_ERROR, "padding as long as the frame")
    return payload[1 : len(payload) - payload[0]]


def well_formed(fields: list[tuple[str, str]]) -> bool:
    """Lower-case names, pseudo-headers first, no connection-specific fields (RFC 9113 §8.2)."""
    regular = False
    for name, value in fields:
        if name != name.lower() or name in _CONNECTION_HEADERS:
            return False
        if name.startswith(":"):
            if regular:
                return False
        else:
            regular = True
            if name == "te" and value != "trailers":
                return False
    return True
