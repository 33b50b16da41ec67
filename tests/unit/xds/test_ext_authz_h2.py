"""The ext_authz front's h2 side, read with the `h2` library's client over mTLS (ALPN h2): a
Check call is answered on the front's TLS port; a front handing its sidecars over (`drain`)
sends a GOAWAY that lets no new stream in (last stream id 2^31-1, NO_ERROR) and still answers
a call that crossed it; an HTTP/1.1 client on the same port is still answered as before; a peer
that stays idle is ended by the front (h2: the same graceful GOAWAY first, then closed)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
from cryptography.hazmat.primitives.serialization import Encoding
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    CheckRequest,
    CheckResponse,
)
from meshwarden.engine import SpiffeId, TrustDomain, check_documents, parse_text
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    SystemClock,
    generate_key,
    private_key_pkcs8_pem,
)
from meshwarden.xds import (
    EXT_AUTHZ_FRONT_IDLE_SECONDS,
    Authorization,
    AuthzHttpFront,
    front_tls,
    registered_workload,
    serve_authz_http,
)

TD = "example.org"
API = f"spiffe://{TD}/ns/a/sa/api"
CALLER = f"spiffe://{TD}/ns/b/sa/client"
DATA, HEADERS, GOAWAY = 0, 1, 7  # HTTP/2 frame types
DOCS = f"""\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: m}}
spec: {{trustDomain: {TD}}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: api, namespace: a}}
spec: {{serviceAccount: api, ports: [{{port: 8080, protocol: http}}]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: client, namespace: a}}
spec: {{rules: [{{from: [{{identities: ["{CALLER}"]}}]}}]}}
"""


def _svid(ca: CertificateAuthority, spiffe_id: str | None, folder: Path) -> tuple[Path, Path]:
    key = generate_key()
    if spiffe_id is None:
        svid = ca.sign_server_svid(key.public_key())
    else:
        svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
    folder.mkdir()
    chain, key_file = folder / "chain.pem", folder / "key.pem"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
    key_file.write_bytes(private_key_pkcs8_pem(key))
    return chain, key_file


def _front(idle_seconds: float = EXT_AUTHZ_FRONT_IDLE_SECONDS) -> AuthzHttpFront:
    documents, problems = parse_text(DOCS)
    assert not problems
    compiled, _ = check_documents(documents)
    assert compiled is not None
    authorization = Authorization(registered_workload(lambda: compiled, lambda c: c))
    return AuthzHttpFront(authorization, idle_seconds=idle_seconds)


def _check(principal: str) -> bytes:
    http = AttributeContextHttpRequest(method="GET", path="/x", host="api.a:8080")
    source = AttributeContextPeer(principal=principal)
    request = AttributeContextRequest(http=http)
    body = bytes(CheckRequest(attributes=AttributeContext(source=source, request=request)))
    return b"\x00" + len(body).to_bytes(4, "big") + body


@dataclass
class _Frame:
    kind: int
    flags: int
    sid: int
    payload: bytes


class _Client:
    """An h2 client connection: Check calls out (encoded by the `h2` library, which cannot read
    past a GOAWAY), frames in (read here)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.frames: list[_Frame] = []
        self._buffer = b""

    def call(self, principal: str) -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/envoy.service.auth.v3.Authorization/Check"),
            (":authority", "meshwarden"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-meshwarden-workload", "a/api"),
            ("x-meshwarden-port", "8080"),
        ]
        self.h2.send_headers(sid, headers)
        self.h2.send_data(sid, _check(principal), end_stream=True)
        self.writer.write(self.h2.data_to_send())
        return sid

    def ended(self, sid: int) -> bool:
        return any(f.sid == sid and f.kind in (DATA, HEADERS) and f.flags & 1 for f in self.frames)

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not done():
                data = await self.reader.read(65536)
                assert data, "the front closed the connection"
                self._buffer += data
                while len(self._buffer) >= 9:
                    length = int.from_bytes(self._buffer[:3], "big")
                    if len(self._buffer) < 9 + length:
                        break
                    kind, flags = self._buffer[3], self._buffer[4]
                    sid = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
                    self.frames.append(_Frame(kind, flags, sid, self._buffer[9 : 9 + length]))
                    self._buffer = self._buffer[9 + length :]

    def goaway(self) -> tuple[int, int] | None:
        """(last stream id, error code) of the GOAWAY received, if one was."""
        found = [f.payload for f in self.frames if f.kind == GOAWAY]
        if not found:
            return None
        return int.from_bytes(found[0][:4], "big"), int.from_bytes(found[0][4:8], "big")

    def answer(self, sid: int) -> str:
        """The decision in the CheckResponse of stream `sid`."""
        body = b"".join(f.payload for f in self.frames if f.kind == DATA and f.sid == sid)
        metadata = CheckResponse.parse(body[5:]).dynamic_metadata
        assert metadata is not None
        return str(metadata.to_dict()["decision"])


class _Certificates:
    """The front's certificate and a workload's, from one CA; the client's TLS per ALPN."""

    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
        self.chain, self.key = _svid(self.ca, None, folder / "server")
        self.client = _svid(self.ca, API, folder / "client")

    async def serve(self, front: AuthzHttpFront) -> tuple[asyncio.Server, int]:
        tls = front_tls(self.chain, self.key, self.ca.bundle().x509_pem())
        server = await serve_authz_http(front, "127.0.0.1", 0, tls.listening)
        return server, server.sockets[0].getsockname()[1]

    def client_tls(self, alpn: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.load_cert_chain(*self.client)
        context.set_alpn_protocols([alpn])
        return context


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the front sent until it closed the connection (within a generous bound)."""
    received = b""
    async with asyncio.timeout(60):
        try:
            while data := await reader.read(65536):
                received += data
        except (ConnectionResetError, ssl.SSLError):
            pass
    return received


def test_a_draining_front_lets_no_new_stream_in_and_answers_one_that_crossed(
    tmp_path: Path,
) -> None:
    certificates = _Certificates(tmp_path)
    client_tls = certificates.client_tls
    front = _front()

    async def scenario() -> tuple[Any, ...]:
        server, port = await certificates.serve(front)
        client = _Client(*await asyncio.open_connection("127.0.0.1", port, ssl=client_tls("h2")))
        first = client.call(CALLER)
        await client.until(lambda: client.ended(first))
        answers = [client.answer(first)]
        front.drain()  # as a retired worker does
        crossing = client.call(f"spiffe://{TD}/ns/b/sa/other")  # sent before reading the GOAWAY
        await client.until(lambda: client.goaway() is not None and client.ended(crossing))
        answers.append(client.answer(crossing))
        goaway = client.goaway()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_tls("http/1.1")
        )
        writer.write(
            b"GET /meshwarden.authz/check/x HTTP/1.1\r\nhost: api.a:8080\r\n"
            b"x-meshwarden-workload: a/api\r\nx-meshwarden-port: 8080\r\n"
            b"x-meshwarden-peer: =" + CALLER.encode() + b"\r\nx-meshwarden-source: =10.1.2.3\r\n"
            b"x-meshwarden-jwt: =\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        client.writer.close()
        server.close()
        return answers, goaway, head

    answers, goaway, head = asyncio.run(scenario())
    assert answers == ["allow", "deny"]
    assert goaway == (2**31 - 1, 0)
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head  # draining


def test_an_idle_peer_is_ended_by_the_front_an_h2_one_after_a_graceful_goaway(
    tmp_path: Path,
) -> None:
    """(The sidecars close theirs first: test_ext_authz_idle.py, with a real Envoy.)"""
    certificates = _Certificates(tmp_path)
    front = _front(idle_seconds=0.5)  # a short wait for the test; 30 s in service

    async def scenario() -> tuple[Any, ...]:
        server, port = await certificates.serve(front)
        tls = certificates.client_tls
        client = _Client(*await asyncio.open_connection("127.0.0.1", port, ssl=tls("h2")))
        first = client.call(CALLER)
        await client.until(lambda: client.ended(first))
        await client.until(lambda: client.goaway() is not None)  # then idle, sending nothing
        goaway, answer = client.goaway(), client.answer(first)
        await _until_closed(client.reader)
        http1, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls("http/1.1"))
        silent = await _until_closed(http1)  # a TLS peer that never sends a request
        ended = front.idle_ended
        for ours in (client.writer, writer):
            ours.close()
        async with asyncio.timeout(60):
            while front.connections:  # both let go of (TLS waits for the peer's close)
                await asyncio.sleep(0.05)
        server.close()
        return answer, goaway, silent, ended

    answer, goaway, silent, ended = asyncio.run(scenario())
    assert answer == "allow"
    assert goaway == (2**31 - 1, 0)  # no new stream, and any that crossed it is answered
    assert silent == b""
    assert ended == 2
