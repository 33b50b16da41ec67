"""gRPC over HTTP/2, the wire parts of a server (the gRPC "PROTOCOL-HTTP2" document): requests'
headers checked and their metadata taken out, length-prefixed messages read with a size cap,
and the response's header blocks (precomputed HPACK literals, `_h2_frames.literal`)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from meshwarden.identities._h2_frames import literal

# The largest request message: grpc's default is 4 MiB, but no Workload API or SDS request
# comes near 1 MiB (an Envoy node with its extension list is tens of KiB), and the connection's
# flow-control window, which bounds the request bytes held per connection, is this size.
MAX_MESSAGE = 1024 * 1024
MAX_STATUS_MESSAGE = 1024
# Status codes (grpc.StatusCode values, as numbers on the wire).
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14

_CONTENT_TYPE = literal(b"content-type", b"application/grpc")
RESPONSE_HEADERS = b"\x88" + _CONTENT_TYPE  # :status 200 (static table entry 8)
_RESERVED = frozenset(("te", "content-type", "grpc-timeout", "grpc-encoding", "user-agent"))
_GRPC_SUBTYPES = ("application/grpc+", "application/grpc;")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def trailers(code: int, message: str = "") -> bytes:
    """The trailers that end a call (grpc-message percent-encoded, at most 1 KiB)."""
    block = literal(b"grpc-status", str(code).encode())
    if message:
        encoded = percent_encoded(message)
        if len(encoded) > MAX_STATUS_MESSAGE:
            encoded = encoded[:MAX_STATUS_MESSAGE]
            cut = encoded.rfind(b"%", MAX_STATUS_MESSAGE - 2)
            encoded = encoded[:cut] if cut >= 0 else encoded  # no escape cut in half
        block += literal(b"grpc-message", encoded)
    return block


def trailers_only(code: int, message: str = "") -> bytes:
    """A call answered by its status alone (HEADERS with END_STREAM)."""
    return RESPONSE_HEADERS + trailers(code, message)


OK_TRAILERS = trailers(OK)


def percent_encoded(message: str) -> bytes:
    """Bytes outside printable ASCII, and `%`, as %XX of their UTF-8 encoding."""
    return b"".join(
        bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
        for b in message.encode("utf-8", "replace")
    )


@dataclass(frozen=True, slots=True)
class Request:
    """A call's request headers: its method path, the metadata a servicer sees, its deadline."""

    path: str
    metadata: tuple[tuple[str, str | bytes], ...]
    timeout: float | None


KNOWN_REQUESTS = 64  # header lists whose Request is kept (each of at most KNOWN_REQUEST_SIZE)
KNOWN_REQUEST_SIZE = 4096
_known_requests: dict[tuple[tuple[str, str], ...], Request | tuple[int, str]] = {}


def request(headers: list[tuple[str, str]]) -> Request | tuple[int, str]:
    """The call, or (status, message) when the headers are not a gRPC request. Both are
    immutable and a function of the headers alone, so those of the last `KNOWN_REQUESTS`
    distinct small header lists are kept: a workload's client sends the same ones on every
    connection."""
    key = tuple(headers)
    found = _known_requests.get(key)
    if found is None:
        found = _request(headers)
        if sum(len(name) + len(value) for name, value in headers) <= KNOWN_REQUEST_SIZE:
            if len(_known_requests) >= KNOWN_REQUESTS:
                _known_requests.pop(next(iter(_known_requests)), None)
            _known_requests[key] = found
    return found


def _request(headers: list[tuple[str, str]]) -> Request | tuple[int, str]:
    fields: dict[str, str] = {}
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name.startswith(":"):
            if name in fields:
                return INTERNAL, f"{name} repeated"
            fields[name] = value
        elif name.startswith("grpc-") and name not in ("grpc-timeout", "grpc-encoding"):
            continue  # grpc-accept-encoding, grpc-previous-rpc-attempts, ...: transport's
        elif name in _RESERVED:
            fields[name] = value
        elif name.endswith("-bin"):
            try:
                metadata.append((name, base64.b64decode(value + "==")))
            except (binascii.Error, ValueError):
                return INTERNAL, f"metadata {name} is not base64"
        else:
            metadata.append((name, value))
    if fields.get(":method") != "POST" or not fields.get(":path", "").startswith("/"):
        return UNIMPLEMENTED, "not a gRPC call (POST to /service/method)"
    content_type = fields.get("content-type", "")
    if content_type != "application/grpc" and not content_type.startswith(_GRPC_SUBTYPES):
        return UNIMPLEMENTED, f"content-type {content_type!r} is not gRPC"
    timeout = _timeout(fields.get("grpc-timeout"))
    if timeout == -1.0:
        return INTERNAL, "malformed grpc-timeout"
    return Request(fields[":path"], tuple(metadata), timeout)


def _timeout(value: str | None) -> float | None:
    if value is None:
        return None
    digits, unit = value[:-1], value[-1:]
    if not 0 < len(digits) <= 8 or not digits.isascii() or not digits.isdigit():
        return -1.0
    scale = _TIMEOUT_UNITS.get(unit)
    return -1.0 if scale is None else int(digits) * scale


class MessageReader:
    """Length-prefixed messages out of a stream's request bytes: `feed` returns the complete
    ones, or (status, message) once, after which nothing more is read. At most one partial
    message of at most `max_message` bytes is held."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.failed = False
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes] | tuple[int, str]:
        if self.failed:
            return []
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        at = 0
        while len(buffer) - at >= 5:
            flag, size = buffer[at], int.from_bytes(buffer[at + 1 : at + 5], "big")
            if flag == 1:
                return self._fail(UNIMPLEMENTED, "compressed request messages are not supported")
            if flag != 0:
                return self._fail(INTERNAL, f"a request message with flag byte {flag}")
            if size > self.max_message:
                return self._fail(
                    RESOURCE_EXHAUSTED,
                    f"a request message of {size} bytes, more than the {self.max_message} allowed",
                )
            if len(buffer) - at < 5 + size:
                break
            messages.append(bytes(buffer[at + 5 : at + 5 + size]))
            at += 5 + size
        del buffer[:at]
        return messages

    def _fail(self, code: int, reason: str) -> tuple[int, str]:
        self.failed = True
        self._buffer = bytearray()
        return code, reason

    @property
    def partial(self) -> bool:
        return bool(self._buffer)


def message(payload: bytes) -> bytes:
    """One response message, length-prefixed, uncompressed."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload
