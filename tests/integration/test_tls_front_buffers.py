"""The control plane's TLS front holds a 16 KiB read buffer per connection (not asyncio's
256 KiB), and messages far larger than one buffer still cross it whole, both ways."""

from __future__ import annotations

import asyncio
import hashlib
from asyncio import sslproto
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import TrustDomain
from meshwarden.identities import (
    SERVER_DNS_NAME,
    CaConfig,
    CertificateAuthority,
    ServerTls,
    SystemClock,
    TlsEndpoint,
    generate_key,
    private_key_pkcs8_pem,
    write_file,
)

from .harness import LoopThread

ECHO = "/bench.Echo/Digest"


def _digest_handler() -> grpc.GenericRpcHandler:
    async def digest(request: bytes, context: Any) -> bytes:
        return hashlib.sha256(request).digest() + request[::-1]

    handler = grpc.unary_unary_rpc_method_handler(digest)
    return grpc.method_handlers_generic_handler("bench.Echo", {"Digest": handler})


def test_a_megabyte_crosses_the_tls_front_whole_with_16_kib_read_buffers(tmp_path: Path) -> None:
    ca = CertificateAuthority(CaConfig(TrustDomain("example.org")), SystemClock())
    key = generate_key()
    chain = b"".join(
        c.public_bytes(Encoding.PEM) for c in ca.sign_server_svid(key.public_key()).chain
    )
    write_file(tmp_path / "server.key", private_key_pkcs8_pem(key))
    write_file(tmp_path / "server.pem", chain)
    roots = bytes(ca.bundle().x509_pem())
    tls = ServerTls(tmp_path / "server.pem", tmp_path / "server.key", roots)
    endpoint = TlsEndpoint(
        "127.0.0.1",
        0,
        tls,
        lambda server, peers: server.add_generic_rpc_handlers((_digest_handler(),)),
    )
    loop = LoopThread()
    payload = bytes(range(256)) * 4096  # 1 MiB, 64 read buffers
    try:
        loop.run(endpoint.start())
        assert sslproto.SSLProtocol.max_size == 16 * 1024

        async def call() -> bytes:
            credentials = grpc.ssl_channel_credentials(roots)
            options = [("grpc.ssl_target_name_override", SERVER_DNS_NAME)]
            target = f"127.0.0.1:{endpoint.port}"
            async with grpc.aio.secure_channel(target, credentials, options) as channel:
                method = channel.unary_unary(ECHO)
                return await asyncio.wait_for(method(payload), 30)

        answer = loop.run(call(), timeout=60)
        assert answer == hashlib.sha256(payload).digest() + payload[::-1]
    finally:
        loop.run(endpoint.stop(0))
        loop.close()
