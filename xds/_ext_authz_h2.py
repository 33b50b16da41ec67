"""The ext_authz front's HTTP/2 side: Envoy's gRPC `Check` (`envoy.service.auth.v3.Authorization`)
on the same TLS port as the HTTP/1.1 front, for a sidecar whose bootstrap has the front's gRPC
cluster (`bootstrap(..., ext_authz_http_port=...)`, ALPN `h2`).

TLS offers ALPN `h2` and `http/1.1`; once the handshake is done, `Negotiated` hands the
connection to the protocol its ALPN chose: `h2` to an `AuthzGrpcConnection` (the agent's sans-IO
HTTP/2 + gRPC server, `identities.GrpcConnection`, serving only `Check`), anything else to the
HTTP/1.1 front. The caller of every call on an h2 connection is the SPIFFE ID of the
connection's verified client certificate (`identify`), checked against the workload the call's
metadata names by the same resolver as gRPC Check on the control plane's listener; the same
`Authorization` decides, traces and times it, and the answer is the same encoded CheckResponse.

Handing the sidecars over (a retired ext_authz worker, `drain`): each h2 connection gets a
GOAWAY whose last stream id is the largest there is, so Envoy opens no new stream on it (its
next checks go on a new connection, to the worker that took over) while every stream already
sent, even one crossing the GOAWAY, is still answered; Envoy closes the connection once its
streams are done (RFC 9113 §6.8, the graceful shutdown)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from cryptography import x509
from meshwarden.identities import GrpcConnection, IdentityError, LocalServer, spiffe_id_of
from meshwarden.xds._ext_authz import Authorization, authorization_handler

H2 = "h2"
# GOAWAY (type 7) on stream 0: last stream id 2^31-1, NO_ERROR — "no new streams, and every
# stream you sent is still served" (the first GOAWAY of RFC 9113 §6.8's graceful shutdown).
GRACEFUL_GOAWAY = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + b"\x7f\xff\xff\xff\x00\x00\x00\x00"


def transport_spiffe_id(transport: asyncio.BaseTransport) -> str | None:
    """The SPIFFE ID of the connection's verified client certificate (the same parsing as the
    gRPC services', `identities.spiffe_id_of`); None without one."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        return None
    try:
        return str(spiffe_id_of(x509.load_der_x509_certificate(der)))
    except (ValueError, IdentityError):
        return None


def negotiated_h2(transport: asyncio.BaseTransport) -> bool:
    """Whether the TLS handshake chose HTTP/2 (ALPN)."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == H2


def check_server(authorization: Authorization) -> LocalServer:
    """`Check` (only) for `AuthzGrpcConnection`s: the caller is the connection's SPIFFE ID."""
    server = LocalServer()
    server.add_generic_rpc_handlers((authorization_handler(authorization, _connection_peer),))
    return server


def _connection_peer(context: Any) -> str | None:
    peer = getattr(context, "peer_process", None)  # what `identify` returned
    return peer if isinstance(peer, str) else None


class FrontConnection(Protocol):
    """A front connection, whatever its protocol, as its front's idle sweep sees it."""

    def end_if_idle(self, now: float, seconds: float) -> bool:
        """End the connection if no request came for `seconds` and none is being answered;
        whether it began to end now (`time.monotonic()` for `now`)."""
        ...


class FrontConnections(Protocol):
    """A front's connection accounting, whatever the protocol (`AuthzHttpFront`)."""

    draining: bool

    def admit(self, connection: FrontConnection, transport: asyncio.Transport) -> bool: ...

    def release(self, connection: FrontConnection) -> None: ...


class AuthzGrpcConnection(GrpcConnection):
    """One h2 connection of a sidecar to the front: gRPC `Check` calls."""

    def __init__(self, front: FrontConnections, server: LocalServer) -> None:
        super().__init__(server)
        self.front = front
        self.active = time.monotonic()  # the last call's start or end
        self.idle_goaway: float | None = None  # when the idle sweep sent its GOAWAY

    def admit_call(self) -> bool:
        self.active = time.monotonic()
        return True

    def call_finished(self, call: Any) -> None:  # a Call of this connection
        self.active = time.monotonic()
        super().call_finished(call)

    def end_if_idle(self, now: float, seconds: float) -> bool:
        """Idle (no call for `seconds`): first a graceful GOAWAY, as when the front is handed
        over, so the sidecar opens no new stream here and closes the connection itself (a call
        crossing the GOAWAY is still answered); a peer still idle a quarter of `seconds`
        later is closed."""
        if self.transport is None or self.calls or now - self.active < seconds:
            return False
        if self.idle_goaway is None:
            self.idle_goaway = now
            self.drain()
            return True
        if now - self.idle_goaway >= seconds / 4:
            self.close()
        return False

    def identify(self, transport: asyncio.Transport) -> object:
        return transport_spiffe_id(transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.front.admit(self, transport):
            super().connection_made(transport)
            if self.front.draining:
                self.drain()

    def drain(self) -> None:
        """No new streams (see the module docstring); what h2 queued goes out before it."""
        if self.transport is not None and not self.h2.closed:
            self.flush()
            self.transport.write(GRACEFUL_GOAWAY)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.front.release(self)


class Negotiated(asyncio.Protocol):
    """A front connection until its TLS handshake is done: then the protocol ALPN chose takes
    it over (`transport.set_protocol`) from its first byte."""

    def __init__(
        self,
        http1: Callable[[], asyncio.Protocol],
        h2: Callable[[], asyncio.Protocol],
    ) -> None:
        self.http1, self.h2 = http1, h2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        chosen = self.h2() if negotiated_h2(transport) else self.http1()
        transport.set_protocol(chosen)
        chosen.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # never: the chosen protocol reads
        raise AssertionError("a front connection read before its protocol was chosen")
