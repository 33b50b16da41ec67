"""A gRPC endpoint on a Unix socket whose every call knows the calling process, with per-uid
connection limits, a per-uid rate of new connections and calls, and a first-bytes deadline (see
`_limits`).

The endpoint owns each accepted socket: the caller is attested from it (SO_PEERCRED and the
peer's pidfd, `_attestation.attested_peer`) before a byte is read, and its HTTP/2 and gRPC are
served in this process by `_grpc_connection` (sans-IO `_h2_server` underneath), so a call's
caller is the process at the other end of the call's own connection. The pidfd is closed with
the connection."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshwarden.identities._attestation import PeerProcess, attested_peer, unix_selectors
from meshwarden.identities._errors import AttestationError
from meshwarden.identities._grpc_calls import LocalServer
from meshwarden.identities._grpc_connection import GrpcConnection
from meshwarden.identities._limits import (
    ConnectionLimits,
    RateLimitedLog,
    SilenceDeadline,
    UidGate,
    UidRate,
)
from meshwarden.identities._socket_claim import SocketLock, claim_socket_path

DEFAULT_LIMITS = ConnectionLimits()
# Connections the kernel queues for accept while the agent is busy: a workload's gRPC client
# connects without blocking, and a refused connect costs it a reconnect back-off of a second or
# more, so a burst of workloads starting at once (or Envoys reconnecting to SDS) waits instead.
ACCEPT_BACKLOG = 4096
STOP_WAIT_SECONDS = 1.0  # at most this long for cancelled calls to finish at stop
log = logging.getLogger(__name__)


def caller_process(context: Any) -> PeerProcess:
    """The process attested on the connection of the call `context` (a `LocalEndpoint` call)."""
    peer = getattr(context, "peer_process", None)
    if not isinstance(peer, PeerProcess):
        raise AttestationError("the call did not come through an attesting socket")
    return peer


def caller_selectors(context: Any) -> frozenset[str]:
    """The unix selectors of the process that made the call on `context`."""
    return frozenset(unix_selectors(caller_process(context)))


class LocalEndpoint:
    """Serve gRPC services on `socket_path` (mode 0666, like SPIRE's Workload API socket)."""

    def __init__(
        self,
        socket_path: Path,
        add_services: Callable[[LocalServer], None],
        mode: int = 0o666,
        limits: ConnectionLimits = DEFAULT_LIMITS,
    ) -> None:
        self.socket_path = socket_path
        self.limits = limits
        self.gate = UidGate(limits.per_uid)
        self.rate = UidRate(limits.per_second, limits.burst)
        self.log = RateLimitedLog(log)
        self.silence: SilenceDeadline[_GatedConnection] = SilenceDeadline(
            limits.first_bytes_seconds, _GatedConnection.close_silent
        )
        self.server = LocalServer()
        add_services(self.server)
        self._mode = mode
        self._listener: asyncio.AbstractServer | None = None
        self.connections: set[_GatedConnection] = set()
        self.connections_accepted = 0
        self._lock = SocketLock(socket_path)

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()  # refuses a second endpoint on this path, even one starting now
        try:
            claim_socket_path(self.socket_path)  # refuses another live endpoint's socket
            loop = asyncio.get_running_loop()
            self._listener = await loop.create_unix_server(
                self._connection, path=str(self.socket_path), backlog=ACCEPT_BACKLOG
            )
            os.chmod(self.socket_path, self._mode)
        except BaseException:
            await self.stop(0)
            raise

    async def stop(self, grace: float = 0.5) -> None:
        """Stop accepting, cancel every call (each ends with RST_STREAM, each connection with
        GOAWAY), remove the socket."""
        if self._listener is not None:
            self._listener.close()
        self.silence.close()
        tasks = [c.task for conn in self.connections for c in conn.calls.values() if c.task]
        for connection in list(self.connections):
            connection.close()
        if tasks:
            await asyncio.wait(tasks, timeout=max(grace, STOP_WAIT_SECONDS))
        if self._listener is not None:  # only the socket this endpoint bound, never another's
            self.socket_path.unlink(missing_ok=True)
            self._listener = None
        self._lock.release()

    def refuse(self, uid: int, what: str, limit: str) -> None:
        """Log (rate-limited) that `what` of `uid` was refused by the `limit` ("uid", "rate")."""
        why = (
            f"{self.gate.limit} open, the limit per uid"
            if limit == "uid"
            else f"more than {self.limits.per_second:g} connections and calls a second"
        )
        self.log.warning(
            f"{limit}:{uid}", f"{self.socket_path}: refused {what} of uid {uid}: {why}"
        )

    def _connection(self) -> _GatedConnection:
        self.connections_accepted += 1
        return _GatedConnection(self)


class _GatedConnection(GrpcConnection):
    """A connection counted against its caller's uid, closed when it sends nothing within the
    first-bytes deadline."""

    def __init__(self, endpoint: LocalEndpoint) -> None:
        super().__init__(endpoint.server)
        self._endpoint = endpoint
        self._uid: int | None = None
        self._heard = False

    def identify(self, transport: asyncio.Transport) -> PeerProcess:
        endpoint = self._endpoint
        try:
            peer = attested_peer(transport.get_extra_info("socket"))
        except (AttestationError, OSError, ValueError) as exc:
            endpoint.log.warning("attestation", f"{endpoint.socket_path}: caller refused: {exc}")
            raise AttestationError(str(exc)) from None
        refused = None
        if not endpoint.rate.take(peer.uid):
            refused = "rate", f"uid {peer.uid} opens connections too fast"
        elif not endpoint.gate.admit(peer.uid):
            refused = "uid", f"uid {peer.uid} has too many connections open"
        if refused is not None:
            _release(peer)
            endpoint.refuse(peer.uid, "a connection", refused[0])
            raise AttestationError(refused[1])
        self._uid = peer.uid
        endpoint.connections.add(self)
        endpoint.silence.watch(self)
        return peer

    def admit_call(self) -> bool:
        endpoint = self._endpoint
        if self._uid is None or endpoint.rate.take(self._uid):
            return True
        endpoint.refuse(self._uid, "a call", "rate")
        return False

    def close_silent(self) -> None:
        """The first-bytes deadline passed and the client has sent nothing."""
        if not self._heard and self.transport is not None:
            self._endpoint.log.warning(
                f"silent:{self._uid}",
                f"{self._endpoint.socket_path}: closed a connection of uid {self._uid} that sent "
                f"nothing for {self._endpoint.limits.first_bytes_seconds:g} s",
            )
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._heard:
            self._heard = True
            self._endpoint.silence.heard(self)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._endpoint.silence.heard(self)
        if self._uid is not None:
            self._endpoint.gate.release(self._uid)
            self._uid = None
        self._endpoint.connections.discard(self)
        super().connection_lost(exc)  # a call still asking after this is refused
        if isinstance(self.peer, PeerProcess):
            _release(self.peer)


def _release(peer: PeerProcess) -> None:
    """Close the peer's pidfd: the connection it was pinned for has ended."""
    if peer.pidfd is not None:
        peer.pidfd.close()
