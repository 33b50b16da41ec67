"""A gRPC endpoint on a Unix socket whose every call knows the calling process (see `_front`),
with per-uid connection limits and a first-bytes deadline (see `_limits`)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import grpc
from meshwarden.identities._attestation import PeerProcess, peer_process, unix_selectors
from meshwarden.identities._errors import AttestationError
from meshwarden.identities._front import PeerTable, PrivateSocketUpstream, RelayedConnection
from meshwarden.identities._leftovers import remove_stale_private_dirs
from meshwarden.identities._limits import ConnectionLimits, RateLimitedLog, UidGate
from meshwarden.identities._socket_claim import SocketLock, claim_socket_path

ProcessPeers: TypeAlias = PeerTable[PeerProcess]
DEFAULT_LIMITS = ConnectionLimits()
# Connections the kernel queues for accept while the agent is busy: a workload's gRPC client
# connects without blocking, and a refused connect costs it a reconnect back-off of a second or
# more, so a burst of workloads starting at once (or Envoys reconnecting to SDS) waits instead.
ACCEPT_BACKLOG = 4096
log = logging.getLogger(__name__)


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
        limits: ConnectionLimits = DEFAULT_LIMITS,
    ) -> None:
        self.socket_path = socket_path
        self.peers: ProcessPeers = PeerTable()
        self.limits = limits
        self.gate = UidGate(limits.per_uid)
        self.log = RateLimitedLog(log)
        self._add_services = add_services
        self._mode = mode
        self._grpc: grpc.aio.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.upstream: PrivateSocketUpstream | None = None
        self.connections_accepted = 0
        self._lock = SocketLock(socket_path)

    @property
    def internal_address(self) -> str:
        """The grpc server behind the socket, as grpc names it (for diagnostics and tests)."""
        assert self.upstream is not None, "the endpoint has not started"
        return f"unix:{self.upstream.path}"

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()  # refuses a second endpoint on this path, even one starting now
        try:
            await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> None:
        self._grpc = grpc.aio.server()
        self._add_services(self._grpc, self.peers)
        remove_stale_private_dirs(self.socket_path.parent)  # of an endpoint killed with -9
        self.upstream = PrivateSocketUpstream(self.socket_path)
        self.upstream.listen(self._grpc)
        await self._grpc.start()
        claim_socket_path(self.socket_path)  # refuses another live endpoint's socket
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_unix_server(
            self._connection, path=str(self.socket_path), backlog=ACCEPT_BACKLOG
        )
        os.chmod(self.socket_path, self._mode)

    async def stop(self, grace: float = 0.5) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self.upstream is not None:
            self.upstream.remove()
        if self._listener is not None:  # only the socket this endpoint bound, never another's
            self.socket_path.unlink(missing_ok=True)
        self._lock.release()

    def _connection(self) -> RelayedConnection[PeerProcess]:
        self.connections_accepted += 1
        return _GatedConnection(self)


class _GatedConnection(RelayedConnection[PeerProcess]):
    """A relayed connection counted against its caller's uid, closed when it sends nothing
    within the first-bytes deadline."""

    def __init__(self, endpoint: LocalEndpoint) -> None:
        assert endpoint.upstream is not None
        super().__init__(endpoint.peers, endpoint.upstream, self._admit)
        self._endpoint = endpoint
        self._uid: int | None = None
        self._heard = False
        self._deadline: asyncio.TimerHandle | None = None

    def _admit(self, transport: asyncio.Transport) -> PeerProcess:
        endpoint = self._endpoint
        try:
            peer = peer_process(transport.get_extra_info("socket"))
        except (AttestationError, OSError, ValueError) as exc:
            endpoint.log.warning("attestation", f"{endpoint.socket_path}: caller refused: {exc}")
            raise AttestationError(str(exc)) from None
        if not endpoint.gate.admit(peer.uid):
            endpoint.log.warning(
                f"uid:{peer.uid}",
                f"{endpoint.socket_path}: refused a connection of uid {peer.uid}: "
                f"{endpoint.gate.limit} open, the limit per uid",
            )
            raise AttestationError(f"uid {peer.uid} has too many connections open")
        self._uid = peer.uid
        self._deadline = asyncio.get_running_loop().call_later(
            endpoint.limits.first_bytes_seconds, self._close_if_silent
        )
        return peer

    def _close_if_silent(self) -> None:
        if not self._heard and self.transport is not None:
            self._endpoint.log.warning(
                f"silent:{self._uid}",
                f"{self._endpoint.socket_path}: closed a connection of uid {self._uid} that sent "
                f"nothing for {self._endpoint.limits.first_bytes_seconds:g} s",
            )
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._heard = True
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._uid is not None:
            self._endpoint.gate.release(self._uid)
            self._uid = None
        super().connection_lost(exc)
