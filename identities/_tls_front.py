"""A gRPC endpoint on TCP with TLS terminated in Python: client certificates are requested and
verified when given (grpcio cannot do "optional client certificate"), so join-token attestation
and mTLS calls with a node SVID share one port. Who the peer is travels via `PeerTable`."""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from meshwarden.identities._front import LoopbackUpstream, PeerTable, RelayedConnection


@dataclass(frozen=True)
class TlsPeer:
    """The verified client certificate of a connection; None when the client sent none."""

    certificate: x509.Certificate | None


TLS_READ_BUFFER = 16 * 1024  # the most plaintext one TLS record carries (RFC 8446, 5.1)
ACCEPT_BACKLOG = 4096  # connections the kernel queues for accept (sidecars reconnecting at once)


def small_tls_read_buffers() -> None:
    """asyncio gives every TLS connection a read buffer of `SSLProtocol.max_size` (256 KiB),
    held for the connection's life: about 70 % of what a connected sidecar cost the control
    plane. A TLS record carries at most 16 KiB of plaintext, so a buffer of that size still
    reads a whole record per call; bulk transfers only take more calls. Process-wide (asyncio
    has no per-server setting); this front and the ext_authz HTTP front are the control plane's."""
    sslproto.SSLProtocol.max_size = min(sslproto.SSLProtocol.max_size, TLS_READ_BUFFER)


class ServerTls:
    """A TLS 1.2+ server's contexts, following the renewed server certificate and the trust
    bundle's changes: asyncio keeps the context a server was created with for its whole life, so
    that context (`listening`) only hands each handshake to the current one (`sni_callback`,
    which OpenSSL calls with or without a server name). `update` builds a new current context and
    the next handshake uses it: a CA removed from the bundle is refused from then on, which
    adding roots to one long-lived context could never do. Client certificates chaining to the
    roots are asked for (`CERT_OPTIONAL`: verified when given) or required (`CERT_REQUIRED`)."""

    def __init__(
        self,
        chain: Path,
        key: Path,
        roots_pem: bytes,
        *,
        client_certificate: ssl.VerifyMode = ssl.CERT_OPTIONAL,
        alpn: tuple[str, ...] = ("h2",),
    ) -> None:
        self.chain, self.key, self.roots_pem = chain, key, roots_pem
        self.client_certificate, self.alpn = client_certificate, alpn
        self.current = self._context()
        self.listening = self._context()
        self.listening.sni_callback = self._select

    def update(self, roots_pem: bytes | None = None) -> None:
        """Read the certificate and key files again; replace the roots when given."""
        if roots_pem is not None:
            self.roots_pem = roots_pem
        self.current = self._context()

    def _select(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self.current

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = self.client_certificate
        context.load_verify_locations(cadata=self.roots_pem.decode("ascii"))
        context.load_cert_chain(self.chain, self.key)
        context.set_alpn_protocols(list(self.alpn))
        return context


class TlsEndpoint:
    """A gRPC server behind TLS that records each connection's verified peer."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ServerTls,
        add_services: Callable[[grpc.aio.Server, PeerTable[TlsPeer]], None],
    ) -> None:
        self.host, self.port = host, port
        self.tls = tls
        self.peers: PeerTable[TlsPeer] = PeerTable()
        self._add_services = add_services
        self._grpc: grpc.aio.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._upstream = LoopbackUpstream()

    async def start(self) -> None:
        small_tls_read_buffers()
        self._grpc = grpc.aio.server()
        self._add_services(self._grpc, self.peers)
        self._upstream.listen(self._grpc)
        await self._grpc.start()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._connection,
            self.host,
            self.port,
            ssl=self.tls.listening,
            ssl_handshake_timeout=10,
            backlog=ACCEPT_BACKLOG,
        )
        self.port = self._listener.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 0.5) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._grpc is not None:
            await self._grpc.stop(grace)

    def _connection(self) -> RelayedConnection[TlsPeer]:
        return RelayedConnection(self.peers, self._upstream, _identify_certificate)


def _identify_certificate(transport: asyncio.Transport) -> TlsPeer:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    return TlsPeer(x509.load_der_x509_certificate(der) if der else None)
