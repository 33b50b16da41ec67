"""The HTTP/1.1 request heads of Envoy's HTTP ext_authz client, read sans-IO.

`RequestReader.feed(bytes)` returns the complete request heads in order (pipelined ones
included), or a `Malformed` as the last item, after which the reader reads nothing more: the
server answers it and closes the connection. What Envoy sends is narrow, so the reader is strict
and bounded: `HTTP/1.1` only, an origin-form target, token header names, no obsolete line
folding, no control characters, a head of at most `max_head` bytes and `max_headers` fields, and
no body (`content-length: 0` or none; any `transfer-encoding` is refused). Nothing partial is
ever returned: a truncated head waits for more bytes, and a connection closed mid-head simply
has no request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 32 * 1024  # bytes of request line + header fields (Envoy's default limit is 60 KiB)
MAX_HEADERS = 100

_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """One request: method, origin-form target, header fields in order (names lower-case,
    values without surrounding whitespace), and whether the client asked to close after it."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    close: bool = False


@dataclass(frozen=True, slots=True)
class Malformed:
    """Why the bytes are not a request this server reads, and the status to answer with."""

    status: int
    reason: str


class RequestReader:
    """Bytes in, complete request heads out (see the module docstring)."""

    def __init__(self, max_head: int = MAX_HEAD, max_headers: int = MAX_HEADERS) -> None:
        self.max_head = max_head
        self.max_headers = max_headers
        self.failed = False
        self._buffer = b""

    def feed(self, data: bytes) -> list[RequestHead | Malformed]:
        if self.failed:
            return []
        self._buffer += data
        out: list[RequestHead | Malformed] = []
        while True:
            end = self._buffer.find(_END, 0, self.max_head + len(_END))
            if end < 0:
                if len(self._buffer) > self.max_head:
                    return self._fail(out, Malformed(431, "request head too large"))
                return out
            head, self._buffer = self._buffer[:end], self._buffer[end + len(_END) :]
            parsed = self._parse(head)
            if isinstance(parsed, Malformed):
                return self._fail(out, parsed)
            out.append(parsed)

    def _fail(
        self, out: list[RequestHead | Malformed], malformed: Malformed
    ) -> list[RequestHead | Malformed]:
        self.failed = True
        self._buffer = b""
        out.append(malformed)
        return out

    def _parse(self, head: bytes) -> RequestHead | Malformed:
        lines = head.split(b"\r\n")
        first = _request_line(lines[0])
        if isinstance(first, Malformed):
            return first
        if len(lines) - 1 > self.max_headers:
            return Malformed(431, "too many header fields")
        fields: list[tuple[str, str]] = []
        for line in lines[1:]:
            field = _field(line)
            if isinstance(field, Malformed):
                return field
            fields.append(field)
        return _head(first[0], first[1], tuple(fields))


def _request_line(line: bytes) -> tuple[str, str] | Malformed:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        return Malformed(400, "not an origin-form request line")
    if parts[2] != b"HTTP/1.1":
        return Malformed(505, "only HTTP/1.1 is read")
    return parts[0].decode("ascii"), parts[1].decode("ascii")


def _field(line: bytes) -> tuple[str, str] | Malformed:
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        return Malformed(400, "malformed header field (or obsolete line folding)")
    value = value.strip(b" \t")
    if _CONTROL.search(value):
        return Malformed(400, "control character in a header value")
    try:
        return name.decode("ascii").lower(), value.decode("utf-8")
    except UnicodeDecodeError:
        return Malformed(400, "header value is not UTF-8")


def _head(method: str, target: str, fields: tuple[tuple[str, str], ...]) -> RequestHead | Malformed:
    close = False
    for name, value in fields:
        if name == "transfer-encoding":
            return Malformed(501, "a request body is not read")
        if name == "content-length" and value != "0":
            return Malformed(413, "a request body is not read")
        if name == "connection":
            close = close or "close" in (token.strip().lower() for token in value.split(","))
    return RequestHead(method, target, fields, close)
