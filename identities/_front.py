"""Fronts for grpc.aio servers: the public socket is accepted by asyncio, which learns who the
peer is (Unix peer credentials, or a TLS client certificate) and pipes the bytes to a grpc.aio
server bound to an ephemeral loopback port.

grpcio exposes neither SO_PEERCRED nor "request a client certificate if given" (its server
credentials either require one or never ask), so the identity is established here and recorded
per loopback source port; a call on any other connection (a local process dialling the loopback
port directly) finds no record and is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc
from meshwarden.identities._errors import AttestationError

P = TypeVar("P")


class PeerTable(Generic[P]):
    """Loopback source port → what the front learnt about the peer of that connection."""

    def __init__(self) -> None:
        self._by_port: dict[int, P] = {}

    def register(self, port: int, peer: P) -> None:
        self._by_port[port] = peer

    def unregister(self, port: int) -> None:
        self._by_port.pop(port, None)

    def lookup(self, grpc_peer: str) -> P:
        """`grpc_peer` is `context.peer()`, e.g. `ipv4:127.0.0.1:40312`."""
        host, _, port = grpc_peer.rpartition(":")
        peer = self._by_port.get(int(port)) if port.isdigit() else None
        if peer is None or host not in ("ipv4:127.0.0.1", "ipv6:[::1]"):
            raise AttestationError(f"connection {grpc_peer} did not come through the socket")
        return peer

    def of(self, context: grpc.aio.ServicerContext) -> P:
        return self.lookup(context.peer())


class _Half(asyncio.Protocol):
    """One side of a relayed connection: what it receives is written to the other side, with
    back-pressure (a full write buffer on one side pauses reading on the other)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Half | None = None
        self._early: list[bytes] = []
        self.on_lost: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def join(self, other: _Half) -> None:
        self.other, other.other = other, self
        assert other.transport is not None
        for data in self._early:
            other.transport.write(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class RelayedConnection(_Half, Generic[P]):
    """An accepted connection: identified once by `identify` (which may raise
    AttestationError: the connection is then closed), then relayed to the grpc server."""

    def __init__(
        self, table: PeerTable[P], port: int, identify: Callable[[asyncio.Transport], P]
    ) -> None:
        super().__init__()
        self._table, self._port, self._identify = table, port, identify

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        try:
            peer = self._identify(self.transport)
        except AttestationError:
            self.transport.close()
            return
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect(peer))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    async def _connect(self, peer: P) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            upstream, half = await loop.create_connection(_Half, "127.0.0.1", self._port)
        except OSError:
            self.transport.close()
            return
        local_port = upstream.get_extra_info("sockname")[1]
        self._table.register(local_port, peer)
        half.on_lost = lambda: self._table.unregister(local_port)
        half.join(self)
        self.join(half)
        self.transport.resume_reading()


_PENDING: set[asyncio.Task[None]] = set()
