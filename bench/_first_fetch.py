"""Workloads' first Workload API fetch, made cheap on the client side: many Unix-socket
connections from one thread, each sending a complete gRPC call as prepared HTTP/2 bytes
(preface, SETTINGS, HEADERS with the security header, an empty X509SVIDRequest) and reading frames
until the first response message is complete.

A workload starting up pays its client's cost in its own process; here 100 of them share the
benchmark's process, and grpcio's Python client (≈ 1.5 ms of CPU per channel) would be measured
instead of the server. The server is unaware of the difference: the bytes are what any gRPC client
sends (HPACK literals without indexing), and every answer is checked by parsing it."""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
STREAM = 1


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream)
        + payload
    )


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


def call_bytes(path: bytes = b"/SpiffeWorkloadAPI/FetchX509SVID") -> bytes:
    """A whole client connection's first flight: one call on stream 1 with an empty request."""
    block = b"\x83\x86"  # :method POST, :scheme http (HPACK static table 3 and 6)
    block += b"\x04" + bytes((len(path),)) + path  # :path, name from the static table
    block += b"\x01\x09localhost"  # :authority
    block += _literal(b"content-type", b"application/grpc") + _literal(b"te", b"trailers")
    block += _literal(b"workload.spiffe.io", b"true")
    empty_message = b"\x00" + struct.pack(">I", 0)
    return (
        PREFACE
        + frame(SETTINGS, 0, 0)
        + frame(HEADERS, END_HEADERS, STREAM, block)
        + frame(DATA, END_STREAM, STREAM, empty_message)
    )


@dataclass
class Fetch:
    """One workload's connection: when it started connecting, when its first message was
    complete, the message, or what went wrong."""

    sock: socket.socket
    started: float = 0.0
    finished: float | None = None
    message: bytes = b""
    error: str | None = None
    connected: bool = False
    _buffer: bytes = b""
    _data: bytes = field(default=b"", repr=False)

    def connect(self, path: str, first_flight: bytes) -> bool:
        if not self.started:
            self.started = time.perf_counter()
        try:
            self.sock.connect(path)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINPROGRESS):
                return False  # the listen backlog is full: try again
            raise
        self.connected = True
        self.sock.sendall(first_flight)
        return True

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while self.finished is None and len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload, self._buffer = self._buffer[9 : 9 + length], self._buffer[9 + length :]
            self._frame(kind, flags, stream, payload)

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            self.sock.sendall(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self.sock.sendall(frame(PING, ACK, 0, payload))
        elif kind == DATA and stream == STREAM:
            self._data += payload
            if len(self._data) >= 5 and len(self._data) >= 5 + int.from_bytes(
                self._data[1:5], "big"
            ):
                self.message = self._data[5 : 5 + int.from_bytes(self._data[1:5], "big")]
                self.finished = time.perf_counter()
        elif (kind == HEADERS and stream == STREAM and flags & END_STREAM) or kind in (
            RST_STREAM,
            GOAWAY,
        ):
            self.fail(f"the server ended the call (frame type {kind}): {payload[:120]!r}")

    def fail(self, reason: str) -> None:
        self.error = self.error or reason
        self.finished = self.finished or time.perf_counter()


def first_fetches(path: str, clients: int, timeout: float = 30.0) -> list[Fetch]:
    """`clients` workloads connecting to `path` at the same instant; each Fetch is finished
    (with its message, or with an error) unless `timeout` ran out."""
    first_flight = call_bytes()
    fetches = [Fetch(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) for _ in range(clients)]
    for fetch in fetches:
        fetch.sock.setblocking(False)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        waiting = _connect_all(path, first_flight, fetches, selector, deadline)
        while waiting and time.monotonic() < deadline:
            for key, _ in selector.select(0.5):
                fetch = key.data
                _read(fetch)
                if fetch.finished is not None:
                    selector.unregister(fetch.sock)
                    waiting -= 1
    for fetch in fetches:
        fetch.sock.close()
    return fetches


def _connect_all(
    path: str,
    first_flight: bytes,
    fetches: list[Fetch],
    selector: selectors.BaseSelector,
    deadline: float,
) -> int:
    pending = list(fetches)
    while pending and time.monotonic() < deadline:
        retry = []
        for fetch in pending:
            if fetch.connect(path, first_flight):
                selector.register(fetch.sock, selectors.EVENT_READ, fetch)
            else:
                retry.append(fetch)
        pending = retry
        if pending:
            time.sleep(0.0005)
    return len(fetches) - len(pending)


def _read(fetch: Fetch) -> None:
    try:
        chunk = fetch.sock.recv(65536)
    except OSError as exc:
        fetch.fail(f"receive failed: {exc}")
        return
    if not chunk:
        fetch.fail("the server closed the connection")
    else:
        fetch.feed(chunk)
