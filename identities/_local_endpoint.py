"""A gRPC endpoint on a Unix socket whose every call knows the calling process (see `_front`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import grpc
from meshwarden.identities._attestation import PeerProcess, peer_process, unix_selectors
from meshwarden.identities._front import PeerTable, RelayedConnection

ProcessPeers: TypeAlias = PeerTable[PeerProcess]


def caller_selectors(peers: ProcessPeers, context: grpc.aio.ServicerContext) -> frozenset[str]:
    """The unix selectors of the process that made the call on `context`."""
    return frozenset(unix_selectors(peers.of(context)))


class LocalEndpoint:
    """Serve gRPC services on `socket_path` (mode 0666, like SPIRE's Workload API socket)."""

    def __init__(
        self,
        socket_path: Path,
        add_services: Callable[[grpc.aio.Server, ProcessPeers], None],
        mode: int = 0o666,
    ) -> None:
        self.socket_path = socket_path
        self.peers: ProcessPeers = PeerTable()
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
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_unix_server(self._connection, path=str(self.socket_path))
        os.chmod(self.socket_path, self._mode)

    async def stop(self, grace: float = 0.5) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        self.socket_path.unlink(missing_ok=True)

    def _connection(self) -> RelayedConnection[PeerProcess]:
        self.connections_accepted += 1
        return RelayedConnection(self.peers, self._port, _identify_process)


def _identify_process(transport: asyncio.Transport) -> PeerProcess:
    return peer_process(transport.get_extra_info("socket"))
