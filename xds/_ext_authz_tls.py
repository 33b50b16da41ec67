"""The TLS of the ext_authz HTTP front: TLS 1.2+, HTTP/1.1, the server's certificate, and a
client certificate required at the handshake, chaining to the mesh's roots.

asyncio keeps the context a server was created with for its whole life, so that context only
hands each handshake to the current one (`sni_callback`, which OpenSSL calls with or without a
server name). `update` builds a new current context — the renewed server certificate, or the
roots after a CA rotation — and the next handshake uses it: a CA removed from the bundle is
refused from then on, which adding roots to one long-lived context could never do.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class FrontTls:
    """The listening context (`listening`) and the current one it hands handshakes to."""

    def __init__(self, chain: Path, key: Path, roots_pem: bytes) -> None:
        self.chain, self.key, self.roots_pem = chain, key, roots_pem
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
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self.roots_pem.decode("ascii"))
        context.load_cert_chain(self.chain, self.key)
        context.set_alpn_protocols(["http/1.1"])
        return context
