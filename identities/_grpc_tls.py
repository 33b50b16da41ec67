"""A gRPC endpoint whose TLS grpc's C core terminates, for callers that always present an
X509-SVID (sidecars: ADS, access logs, ext_authz). Unlike `TlsEndpoint` no Python relays the
bytes: a client without a certificate chaining to the trust bundle fails the handshake, and a
service reads the verified peer certificate from the call's auth context.

The server certificate and the trust bundle can change while it serves (the server SVID is
renewed, a CA rotation adds or removes roots): grpc asks `RotatingCredentials` before every
handshake whether there is a new configuration, so the next connection uses it and open ones
keep theirs."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc

ServerCredentials = tuple[bytes, bytes, bytes]
"""(private key PEM, certificate chain PEM, client trust roots PEM)."""


class RotatingCredentials:
    """Server credentials that require a client certificate from the current roots."""

    def __init__(self, key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> None:
        self._lock = threading.Lock()  # the fetcher runs on grpc's threads
        self._current: ServerCredentials = (key_pem, chain_pem, roots_pem)
        self._pending: ServerCredentials | None = None

    @property
    def current(self) -> ServerCredentials:
        with self._lock:
            return self._pending or self._current

    def update(
        self,
        *,
        key_pem: bytes | None = None,
        chain_pem: bytes | None = None,
        roots_pem: bytes | None = None,
    ) -> None:
        """Use these for the next handshakes (what is not given stays as it is). A set grpc
        cannot load (a key that is not the chain's) is logged by grpc, and the handshakes go on
        with the configuration before it."""
        with self._lock:
            key, chain, roots = self._pending or self._current
            wanted = (key_pem or key, chain_pem or chain, roots_pem or roots)
            if wanted != self._current:
                self._pending = wanted

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            if self._pending is None:
                return None
            self._current, self._pending = self._pending, None
            return _configuration(self._current)

    def server_credentials(self) -> grpc.ServerCredentials:
        fetch: Callable[[], grpc.ServerCertificateConfiguration | None] = self._fetch
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self.current), fetch, require_client_authentication=True
        )


def _configuration(credentials: ServerCredentials) -> grpc.ServerCertificateConfiguration:
    key, chain, roots = credentials
    return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)


class MtlsEndpoint:
    """A grpc.aio server on HOST:PORT (port 0 picks one) with `RotatingCredentials`."""

    def __init__(
        self,
        host: str,
        port: int,
        credentials: RotatingCredentials,
        add_services: Callable[[grpc.aio.Server], None],
    ) -> None:
        self.host, self.port = host, port
        self.credentials = credentials
        self._add_services = add_services
        self._grpc: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._add_services(server)
        target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            port = server.add_secure_port(target, self.credentials.server_credentials())
        except RuntimeError:  # grpc says only "Failed to bind"
            port = 0
        if port == 0:
            raise OSError(f"{target}: cannot listen there (address in use or not local?)")
        self.port = port
        self._grpc = server
        await server.start()

    async def stop(self, grace: float = 0.5) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace)
