"""The agent's local gRPC connection (HTTP/2 events → calls → handlers) fed fuzzed frames
around a valid call: no exception reaches the event loop, every call ends, and what the server
writes is well-formed frames, a GOAWAY carrying a known error code if any."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshwarden.identities import LocalServer
from meshwarden.identities import _h2_frames as f
from meshwarden.identities._grpc_connection import GrpcConnection


class _Transport(asyncio.Transport):
    """The write side a connection sees; what it writes is kept for the test to parse."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _server() -> LocalServer:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def stream(request: bytes, context: Any) -> Any:
        yield b"x" * 70_000
        await asyncio.Event().wait()

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Chat": grpc.stream_stream_rpc_method_handler(lambda requests, context: requests),
    }
    server = LocalServer()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    return server


def _call(sid: int, method: str) -> bytes:
    block = b"\x83\x86" + f.literal(b":path", f"/t.T/{method}".encode())
    block += f.literal(b"content-type", b"application/grpc") + f.literal(b"te", b"trailers")
    return f.frame(f.HEADERS, f.END_HEADERS, sid, block)


_sids = st.sampled_from([0, 1, 3, 5, 7])
_pieces = st.one_of(
    st.builds(_call, _sids.filter(bool), st.sampled_from(["Echo", "Stream", "Chat", "Nope"])),
    st.builds(
        lambda sid, payload, end: f.frame(f.DATA, f.END_STREAM if end else 0, sid, payload),
        _sids,
        st.one_of(st.binary(max_size=30), st.just(b"\x00\x00\x00\x00\x02hi")),
        st.booleans(),
    ),
    st.builds(lambda sid: f.rst_stream(sid, f.CANCEL), _sids),
    st.builds(lambda sid, n: f.window_update(sid, n), _sids, st.integers(0, 2**31 - 1)),
    st.builds(
        lambda kind, flags, sid, payload: f.frame(kind, flags, sid, payload),
        st.integers(0, 12),
        st.integers(0, 255),
        _sids,
        st.binary(max_size=20),
    ),
)


@given(st.lists(_pieces, max_size=10))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_frames_around_calls_never_escape_as_exceptions(pieces: list[bytes]) -> None:
    async def run() -> tuple[_Transport, list[dict[str, Any]]]:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        connection, transport = GrpcConnection(_server()), _Transport()
        connection.connection_made(transport)
        connection.data_received(f.PREFACE + f.frame(f.SETTINGS, 0, 0))
        for piece in pieces:
            connection.data_received(piece)
            for _ in range(3):
                await asyncio.sleep(0)
        tasks = [call.task for call in connection.calls.values() if call.task is not None]
        connection.close()
        connection.connection_lost(None)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        assert all(task.done() for task in tasks)
        assert not connection.calls
        return transport, errors

    transport, errors = asyncio.run(run())
    assert errors == []
    assert transport.closed
    data, at = bytes(transport.written), 0
    while at < len(data):
        length, kind = int.from_bytes(data[at : at + 3], "big"), data[at + 3]
        payload = data[at + 9 : at + 9 + length]
        if kind == f.GOAWAY:
            assert int.from_bytes(payload[4:8], "big") in {0, 1, 3, 5, 6, 7, 9, 11}
        at += 9 + length
    assert at == len(data)


def test_rst_stream_cancels_a_streaming_handler_and_frees_its_stream() -> None:
    async def run() -> None:
        ended = asyncio.Event()

        async def stream(request: bytes, context: Any) -> Any:
            try:
                yield b"first"
                await asyncio.Event().wait()
            finally:
                ended.set()

        server = LocalServer()
        handler = grpc.unary_stream_rpc_method_handler(stream)
        server.add_registered_method_handlers("t.T", {"Stream": handler})
        connection, transport = GrpcConnection(server), _Transport()
        connection.connection_made(transport)
        empty = f.frame(f.DATA, f.END_STREAM, 1, b"\x00\x00\x00\x00\x00")
        connection.data_received(f.PREFACE + f.frame(f.SETTINGS, 0, 0) + _call(1, "Stream") + empty)
        for _ in range(3):
            await asyncio.sleep(0)
        assert b"first" in transport.written and 1 in connection.calls
        connection.data_received(f.rst_stream(1, f.CANCEL))
        await asyncio.wait_for(ended.wait(), 5)
        for _ in range(3):
            await asyncio.sleep(0)
        assert not connection.calls and not connection.h2.is_open(1)
        assert not transport.closed  # the connection serves on

    asyncio.run(run())
