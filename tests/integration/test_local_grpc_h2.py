"""The agent's local gRPC server against an HTTP/2 client doing what grpcio never does: a
one-byte window, PING, RST_STREAM in the middle of a streaming response (its handler is
cancelled), GOAWAY, a stream over MAX_CONCURRENT_STREAMS, a compressed message, an unknown
method, and bytes that are not HTTP/2. A real `LocalEndpoint` on a Unix socket, the `h2`
library as the client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from meshwarden.identities import LocalEndpoint, caller_process

from .harness import LoopThread, pidfds_open, public_tempdir, remove, wait_for

BIG = bytes(range(256)) * 400  # 100 KiB
PATH = "/test.Local/Stream"


@dataclass
class Served:
    loop: LoopThread
    endpoint: LocalEndpoint
    socket: Path
    started: threading.Semaphore
    cancelled: threading.Semaphore
    callers: list[int]


@pytest.fixture
def served() -> Iterator[Served]:
    loop = LoopThread()
    directory = public_tempdir()
    started, cancelled = threading.Semaphore(0), threading.Semaphore(0)
    callers: list[int] = []

    def add(server: Any) -> None:
        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            callers.append(caller_process(context).pid)
            started.release()
            try:
                yield BIG
                await asyncio.Event().wait()
            finally:
                cancelled.release()

        async def echo(request: bytes, context: Any) -> bytes:
            return request

        handlers = {
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Local", handlers),)
        )

    endpoint = LocalEndpoint(directory / "local.sock", add)
    loop.run(endpoint.start())
    try:
        yield Served(loop, endpoint, directory / "local.sock", started, cancelled, callers)
    finally:
        loop.run(endpoint.stop(0))
        loop.close()
        remove(directory)


class Client:
    """An h2 client connection on a blocking Unix socket."""

    def __init__(self, path: Path, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values=settings or None)
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def call(self, sid: int, path: str = PATH, message: bytes = b"\x00\x00\x00\x00\x00") -> None:
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        self.h2.send_headers(sid, headers)
        self.h2.send_data(sid, message, end_stream=True)
        self.flush()

    def events(self) -> list[h2.events.Event]:
        data = self.sock.recv(65536)
        if not data:
            return [None]  # type: ignore[list-item]
        events = self.h2.receive_data(data)
        with contextlib.suppress(BrokenPipeError):  # the server may have closed by now
            self.flush()
        return events

    def until(self, wanted: type, limit: int = 10_000) -> list[h2.events.Event]:
        seen: list[h2.events.Event] = []
        for _ in range(limit):
            seen += self.events()
            if any(isinstance(e, wanted) for e in seen) or None in seen:
                return seen
        raise AssertionError(f"no {wanted.__name__} in {seen[:20]}")


def _status(events: list[h2.events.Event]) -> dict[str, str]:
    for event in events:
        if isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
            headers = dict(event.headers)
            if "grpc-status" in headers:
                return headers
    raise AssertionError(f"no grpc-status in {events}")


def test_a_one_byte_window_still_delivers_the_whole_response(served: Served) -> None:
    client = Client(served.socket, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
    client.call(1)
    received = bytearray()
    for _ in range(200_000):
        for event in client.events():
            assert event is not None, "the server closed the connection"
            if isinstance(event, h2.events.DataReceived):
                received += event.data
                client.h2.acknowledge_received_data(event.flow_controlled_length, 1)
                client.h2.increment_flow_control_window(1, stream_id=1)  # one more byte
                client.flush()
        if len(received) >= 5 + len(BIG):
            break
    assert bytes(received) == b"\x00" + len(BIG).to_bytes(4, "big") + BIG
    assert served.callers == [__import__("os").getpid()]


def test_rst_stream_mid_response_cancels_the_streaming_handler(served: Served) -> None:
    client = Client(served.socket, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    client.call(1)
    assert served.started.acquire(timeout=10)
    client.until(h2.events.DataReceived)  # part of the 100 KiB, the rest waits for window
    client.h2.reset_stream(1)
    client.flush()
    assert served.cancelled.acquire(timeout=10)  # the handler's finally ran
    client.h2.ping(b"stillok!")
    client.flush()
    assert any(
        isinstance(e, h2.events.PingAckReceived) and e.ping_data == b"stillok!"
        for e in client.until(h2.events.PingAckReceived)
    )
    client.call(3, "/test.Local/Echo", b"\x00\x00\x00\x00\x02hi")
    events = client.until(h2.events.StreamEnded)
    assert _status(events)["grpc-status"] == "0"
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == (
        b"\x00\x00\x00\x00\x02hi"
    )


def test_a_stream_over_the_cap_is_refused_and_goaway_ends_the_calls(served: Served) -> None:
    client = Client(served.socket)
    client.until(h2.events.RemoteSettingsChanged)
    cap = client.h2.remote_settings.max_concurrent_streams
    assert cap == 100
    client.h2.remote_settings.max_concurrent_streams = cap + 1  # a client that ignores it
    client.h2.remote_settings.acknowledge()
    for n in range(cap + 1):
        client.call(1 + 2 * n)
    reset = client.until(h2.events.StreamReset)
    refused = [e for e in reset if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in refused] == [(1 + 2 * cap, 7)]  # REFUSED_STREAM
    for _ in range(cap):
        assert served.started.acquire(timeout=10)
    client.sock.sendall(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + b"\x00" * 4 + b"\x00\x00\x00\x02")
    for _ in range(cap):  # GOAWAY with INTERNAL_ERROR: the client is gone, so is every call
        assert served.cancelled.acquire(timeout=10)
    assert client.until(type(None))[-1] is None  # and the connection is closed


def test_goaway_from_an_idle_client_closes_the_connection(served: Served) -> None:
    client = Client(served.socket)
    client.until(h2.events.RemoteSettingsChanged)
    client.h2.close_connection()
    client.flush()
    assert client.until(type(None))[-1] is None


def test_stopping_the_endpoint_cancels_every_call_and_removes_the_socket(served: Served) -> None:
    client = Client(served.socket)
    for sid in (1, 3):
        client.call(sid)
        assert served.started.acquire(timeout=10)
    served.loop.run(served.endpoint.stop(0))
    for _ in (1, 3):
        assert served.cancelled.acquire(timeout=10)
    events = client.until(type(None))
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    assert not served.socket.exists()


def test_unknown_methods_compressed_messages_and_garbage(served: Served) -> None:
    client = Client(served.socket)
    client.call(1, "/test.Local/Nope")
    assert _status(client.until(h2.events.StreamEnded))["grpc-status"] == "12"
    client.call(3, "/test.Local/Echo", b"\x01\x00\x00\x00\x02hi")  # the compressed flag
    status = _status(client.until(h2.events.StreamEnded))
    assert status["grpc-status"] == "12" and "compressed" in status["grpc-message"]
    raw = socket.socket(socket.AF_UNIX)
    raw.settimeout(10)
    raw.connect(str(served.socket))
    raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while chunk := raw.recv(4096):
        answer += chunk
    assert b"\x07\x00\x00\x00\x00\x00" in answer  # a GOAWAY, then the connection is closed
    raw.close()


def test_grpcio_channels_calling_again_after_a_cached_first_block(served: Served) -> None:
    """grpcio's client indexes its request headers in the HPACK table: each channel's first
    block is the same, so from the second channel on it comes from the first-block cache, and
    each channel's later calls, whose blocks refer to those table entries, are served on the
    channel's one connection (grpcio would retry a call refused with GOAWAY on a new one)."""
    accepted = served.endpoint.connections_accepted
    for _ in range(3):
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"unix:{served.socket}", options=own_connection) as channel:
            echo = channel.unary_unary("/test.Local/Echo")
            for n in range(3):
                request = b"call %d" % n
                assert echo(request, metadata=[("x-call", str(n))]) == request
    assert served.endpoint.connections_accepted == accepted + 3


def test_each_connection_closes_its_pidfd(served: Served) -> None:
    """The endpoint holds a pidfd of each connection's peer: answered, reset or refused, every
    connection gives it back, so the agent's descriptors do not grow with connections served."""
    for n in range(30):
        client = Client(served.socket)
        client.call(1, "/test.Local/Echo" if n % 2 else "/test.Local/Nope")
        client.until(h2.events.StreamEnded)
        client.sock.close()
    wait_for(lambda: not served.loop.call(lambda: served.endpoint.connections))
    wait_for(lambda: pidfds_open() == 0)
