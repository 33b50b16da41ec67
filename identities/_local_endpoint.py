"""A gRPC endpoint on a Unix socket whose every call knows the calling process.

grpcio does not expose SO_PEERCRED, so the public Unix socket is served by a small asyncio
listener that attests each connection as it is accepted and pipes its bytes to a grpc.aio server
bound to an ephemeral loopback port. The listener records which loopback source port carries
which attested process; a call arriving on any other connection (say, a local process dialling
the loopback port directly) has no record and is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import grpc
from meshwarden.identities._attestation import PeerProcess, peer_process, unix_selectors
from meshwarden.identities._errors import AttestationError

_CHUNK = 65536


class PeerTable:
    """Loopback source port → the process attested on the public socket."""

    def __init__(self) -> None:
        self._by_port: dict[int, PeerProcess] = {}

    def register(self, port: int, peer: PeerProcess) -> None:
        self._by_port[port] = peer

    def unregister(self, port: int) -> None:
        self._by_port.pop(port, None)

    def lookup(self, grpc_peer: str) -> PeerProcess:
        """`grpc_peer` is `context.peer()`, e.g. `ipv4:127.0.0.1:40312`."""
        host, _, port = grpc_peer.rpartition(":")
        peer = self._by_port.get(int(port)) if port.isdigit() else None
        if peer is None or host not in ("ipv4:127.0.0.1", "ipv6:[::1]"):
            raise AttestationError(f"connection {grpc_peer} did not come through the socket")
        return peer

    def selectors(self, context: grpc.aio.ServicerContext) -> frozenset[str]:
        return frozenset(unix_selectors(self.lookup(context.peer())))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()


class LocalEndpoint:
    """Serve gRPC services on `socket_path` (mode 0666, like SPIRE's Workload API socket)."""

    def __init__(
        self,
        socket_path: Path,
        add_services: Callable[[grpc.aio.Server, PeerTable], None],
        mode: int = 0o666,
    ) -> None:
        self.socket_path = socket_path
        self.peers = PeerTable()
        self._add_services = add_services
        self._mode = mode
        self._grpc: grpc.aio.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._port = 0
        self.connections_accepted = 0

    @property
    def internal_port(self) -> int:
        """The loopback port of the grpc server behind the socket (for diagnostics and tests)."""
        return self._port

    async def start(self) -> None:
        self._grpc = grpc.aio.server()
        self._add_services(self._grpc, self.peers)
        self._port = self._grpc.add_insecure_port("127.0.0.1:0")
        await self._grpc.start()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self._listener = await asyncio.start_unix_server(self._accept, path=str(self.socket_path))
        os.chmod(self.socket_path, self._mode)

    async def stop(self, grace: float = 0.5) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        self.socket_path.unlink(missing_ok=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        try:
            peer = peer_process(writer.get_extra_info("socket"))
        except AttestationError:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        port = up_writer.get_extra_info("sockname")[1]
        self.peers.register(port, peer)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.peers.unregister(port)
