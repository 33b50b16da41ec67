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
import contextlib
from typing import Generic, TypeVar

import grpc
from meshwarden.identities._errors import AttestationError

P = TypeVar("P")
_CHUNK = 65536


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


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()


async def relay(
    table: PeerTable[P],
    peer: P,
    port: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Pipe an accepted connection to the grpc server on `port`, known there as `peer`."""
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        writer.close()
        return
    local_port = up_writer.get_extra_info("sockname")[1]
    table.register(local_port, peer)
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        table.unregister(local_port)
