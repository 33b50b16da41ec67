"""A front for a grpc.aio server (the node API's, `_tls_front`): the public socket is accepted by
asyncio, which learns who the peer is (a TLS client certificate) and pipes the bytes to a grpc.aio
server behind it on an ephemeral loopback port (`LoopbackUpstream`).

grpcio's server credentials either require a client certificate or never ask for one, so the
identity is established here and recorded under the name grpc gives the relayed connection's peer
(`ipv4:127.0.0.1:PORT`); a call on any other connection (a process dialling the grpc server
directly) finds no record and is refused. (The agent's Unix sockets need no front: their gRPC
server owns the accepted socket, `_local_endpoint`.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import grpc
from meshwarden.identities._errors import AttestationError

P = TypeVar("P")


class PeerTable(Generic[P]):
    """grpc's name for a relayed connection's peer → what the front learnt about the peer of
    the connection it relays."""

    def __init__(self) -> None:
        self._by_name: dict[str, P] = {}

    def register(self, name: str, peer: P) -> None:
        self._by_name[name] = peer

    def unregister(self, name: str) -> None:
        self._by_name.pop(name, None)

    def lookup(self, grpc_peer: str) -> P:
        """`grpc_peer` is `context.peer()`, e.g. `ipv4:127.0.0.1:40312`."""
        peer = self._by_name.get(grpc_peer)
        if peer is None:
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


class Upstream(Protocol):
    """Where a front relays its accepted connections: the grpc server's listener."""

    def listen(self, server: grpc.aio.Server) -> None:
        """Add the listener to `server` (before it starts)."""
        ...

    async def connect(self) -> tuple[_Half, str]:
        """A new connection to the grpc server, and the name grpc gives its peer."""
        ...


class LoopbackUpstream:
    """A grpc server on an ephemeral loopback port (any local process can dial it; the peer
    table refuses its calls)."""

    def __init__(self) -> None:
        self.port = 0

    def listen(self, server: grpc.aio.Server) -> None:
        self.port = server.add_insecure_port("127.0.0.1:0")

    async def connect(self) -> tuple[_Half, str]:
        loop = asyncio.get_running_loop()
        upstream, half = await loop.create_connection(_Half, "127.0.0.1", self.port)
        return half, f"ipv4:127.0.0.1:{upstream.get_extra_info('sockname')[1]}"


class RelayedConnection(_Half, Generic[P]):
    """An accepted connection: identified once by `identify` (which may raise
    AttestationError: the connection is then closed), then relayed to the grpc server."""

    def __init__(
        self, table: PeerTable[P], upstream: Upstream, identify: Callable[[asyncio.Transport], P]
    ) -> None:
        super().__init__()
        self._table, self._upstream, self._identify = table, upstream, identify

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
        try:
            half, name = await self._upstream.connect()
        except OSError:
            self.transport.close()
            return
        self._table.register(name, peer)
        half.on_lost = lambda: self._table.unregister(name)
        half.join(self)
        self.join(half)
        self.transport.resume_reading()


_PENDING: set[asyncio.Task[None]] = set()
