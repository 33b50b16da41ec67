"""ext_authz over HTTP/1.1 (`extAuthz.transport: http`): the engine's answer to Envoy's HTTP
ext_authz client, on an asyncio Protocol with no framework — a keep-alive request costs a small
fraction of a grpc.aio unary call (docs/benchmarks.md).

The same `Authorization` decides (same resolver, decision cache, span and metric) as for gRPC
`Check`; only the request and the answer change shape. The request (`read_check`): the client's
method, `CHECK_PATH` + its path, its host, the headers the policies read, and the filter's
`RESERVED` headers, each required exactly once — anything missing, repeated or malformed is
denied, never allowed. The answer: 200 to allow, else the denial's 403/401 with its body; the
verdict travels in `VERDICT_HEADERS`, which the filter turns into the same dynamic metadata the
gRPC answer carries. Protocol errors (`RequestReader`) are answered with their status and the
connection is closed; the sidecar's filter treats any answer but 200 as a denial.

Who calls: the server is given an `ssl.SSLContext` that requires client certificates from the
mesh's trust bundle, and the connection's verified SPIFFE ID is the caller the resolver checks
the claimed workload against (as for gRPC); without TLS it must listen on loopback only (tests,
benchmarks). At most `max_connections` connections are open at once.

Idle connections: a sidecar's bootstrap closes its own after `EXT_AUTHZ_HTTP_IDLE_SECONDS` (both
clusters to the front), and the front ends one that had no request for `idle_seconds`
(`EXT_AUTHZ_FRONT_IDLE_SECONDS`, ten times longer: a peer that is no such sidecar, or went
quiet): an HTTP/1.1 connection is closed, an h2 one gets a graceful GOAWAY first. The sidecar
closing first matters: a check sent on a connection at the instant the front closes it would
fail (403).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshwarden.engine import Cause, Effect
from meshwarden.identities import ServerTls
from meshwarden.xds._check import CheckAttributes
from meshwarden.xds._decisions import Verdict
from meshwarden.xds._ext_authz import Authorization, denial
from meshwarden.xds._ext_authz_filter import (
    CHECK_PATH,
    JWT_HEADER,
    PEER_HEADER,
    PORT_HEADER,
    RESERVED,
    RESERVED_PREFIX,
    SOURCE_HEADER,
    TRACE_HEADERS,
    WORKLOAD_HEADER,
)
from meshwarden.xds._ext_authz_h2 import (
    H2,
    AuthzGrpcConnection,
    FrontConnection,
    Negotiated,
    check_server,
    transport_spiffe_id,
)
from meshwarden.xds._ext_authz_http1 import Malformed, RequestHead, RequestReader

MAX_CONNECTIONS = 8192  # Envoy pools a few per sidecar worker: room for thousands of sidecars
# A connection without a request this long is ended by the front: ten times the sidecars' own
# idle timeout (EXT_AUTHZ_HTTP_IDLE_SECONDS), so a sidecar always closes its idle ones first.
EXT_AUTHZ_FRONT_IDLE_SECONDS = 30.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}


class Refused(ValueError):
    """A request head that is HTTP but not a check this engine reads."""


def read_check(head: RequestHead) -> tuple[CheckAttributes, dict[str, str]]:
    """The attributes of one check and its call metadata (workload, port, trace context);
    raises Refused when a reserved header is missing or repeated, or the path is not a check."""
    fields: dict[str, list[str]] = {}
    for name, value in head.headers:
        fields.setdefault(name, []).append(value)
    reserved = {name: _once(fields, name) for name in RESERVED}
    for name in (PEER_HEADER, SOURCE_HEADER, JWT_HEADER):
        if not reserved[name].startswith("="):
            raise Refused(f"{name} is not as the sidecar's filter writes it")
    if not head.target.startswith(CHECK_PATH + "/"):
        raise Refused(f"the path is not under {CHECK_PATH}")
    jwt = reserved[JWT_HEADER][1:]
    check = CheckAttributes(
        principal=reserved[PEER_HEADER][1:],
        source_ip=reserved[SOURCE_HEADER][1:],
        http=True,
        method=head.method,
        path=head.target[len(CHECK_PATH) :],
        host=_once(fields, "host"),
        headers={
            name: ",".join(values)
            for name, values in fields.items()
            if not name.startswith(RESERVED_PREFIX)
        },
        jwt_payload=_claims(jwt) if jwt else None,
        jwt_raw=jwt.encode(),
    )
    metadata = {name: reserved[name] for name in (WORKLOAD_HEADER, PORT_HEADER)}
    metadata.update((name, _once(fields, name)) for name in TRACE_HEADERS if name in fields)
    return check, metadata


def _once(fields: Mapping[str, list[str]], name: str) -> str:
    values = fields.get(name, [])
    if len(values) != 1:
        raise Refused(f"{name} must come exactly once (came {len(values)} times)")
    return values[0]


def _claims(payload: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError as bad:
        raise Refused(f"{JWT_HEADER} is not JSON: {bad}") from None


_ANSWERS: dict[tuple[Verdict, str], bytes] = {}
_ANSWERS_LIMIT = 4096


def http_answer(verdict: Verdict, detail: str) -> bytes:
    """The HTTP response carrying a verdict (each distinct answer is encoded once)."""
    key = (verdict, detail)
    cached = _ANSWERS.get(key)
    if cached is not None:
        return cached
    fields = "".join(
        f"{name}: {_header_safe(value)}\r\n"
        for name, value in verdict.to_metadata().items()
        if value is not None
    )
    if verdict.decision == Effect.ALLOW:
        status, body = 200, b""
    else:
        code, text = denial(verdict, detail)
        status, body = code, text.encode()
        fields += "content-type: text/plain\r\n"
    encoded = _response(status, fields, body)
    if len(_ANSWERS) >= _ANSWERS_LIMIT:
        _ANSWERS.clear()
    _ANSWERS[key] = encoded
    return encoded


def _header_safe(value: Any) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in str(value))


def _response(status: int, fields: str, body: bytes, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n{fields}"
    head += f"content-length: {len(body)}\r\n" + ("connection: close\r\n" if close else "")
    return head.encode() + b"\r\n" + body


class AuthzHttpFront:
    """The HTTP/1.1 front of one `Authorization`: connection accounting and the answer to
    each request head."""

    def __init__(
        self,
        authorization: Authorization,
        max_connections: int = MAX_CONNECTIONS,
        idle_seconds: float = EXT_AUTHZ_FRONT_IDLE_SECONDS,
    ):
        self.authorization = authorization
        self.max_connections = max_connections
        self.idle_seconds = idle_seconds
        self.refused_connections = 0
        self.idle_ended = 0  # connections the front ended for want of requests
        self.draining = False
        self.open: set[FrontConnection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self.grpc = check_server(authorization)  # gRPC Check on the connections ALPN made h2

    def answer(self, head: RequestHead, caller: str | None) -> bytes:
        try:
            check, metadata = read_check(head)
        except Refused as refused:
            verdict = Verdict(Effect.DENY, Cause.AUTHZ_UNAVAILABLE)
            return http_answer(verdict, f"the engine cannot read this check: {refused}")
        return http_answer(*self.authorization.answer(check, caller, metadata))

    def protocol(self) -> Negotiated:
        """A connection's protocol: HTTP/1.1, or gRPC Check when ALPN chose h2."""
        return Negotiated(lambda: AuthzHttpConnection(self), self._grpc_connection)

    def _grpc_connection(self) -> AuthzGrpcConnection:
        return AuthzGrpcConnection(self, self.grpc)

    def admit(self, connection: FrontConnection, transport: asyncio.Transport) -> bool:
        """Count a new connection, or abort it when `max_connections` are open."""
        if self.connections >= self.max_connections:
            self.refused_connections += 1
            transport.abort()
            return False
        self.open.add(connection)
        if self._sweep is None:
            self._next_sweep()
        return True

    def release(self, connection: FrontConnection) -> None:
        self.open.discard(connection)

    def _next_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(self.idle_seconds / 4, self._end_idle)

    def _end_idle(self) -> None:
        """End the connections idle for `idle_seconds` (each within a quarter more); sweep
        again while any is open."""
        self._sweep = None
        now = time.monotonic()
        for connection in list(self.open):
            self.idle_ended += connection.end_if_idle(now, self.idle_seconds)
        if self.open:
            self._next_sweep()

    @property
    def connections(self) -> int:
        """Connections open now (both protocols)."""
        return len(self.open)

    def drain(self) -> None:
        """Hand the sidecars over to another front (stop listening first): each HTTP/1.1
        connection's next answer says `connection: close` and the connection ends after it. An
        idle one is left for the sidecar to close (its bootstrap's idle timeout,
        `EXT_AUTHZ_HTTP_IDLE_SECONDS`): closing it here could cross a check the sidecar is
        sending on it, which would fail (403). Each h2 connection gets a graceful GOAWAY
        (`AuthzGrpcConnection.drain`): the sidecar sends no new call on it and closes it."""
        self.draining = True
        for connection in list(self.open):
            if isinstance(connection, AuthzGrpcConnection):
                connection.drain()


class AuthzHttpConnection(asyncio.Protocol):
    """One keep-alive connection from a sidecar: heads in, answers out, in order."""

    def __init__(self, front: AuthzHttpFront) -> None:
        self.front = front
        self.reader = RequestReader()
        self.caller: str | None = None
        self.transport: asyncio.Transport | None = None
        self.active = time.monotonic()  # the last request's arrival

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self.front.admit(self, transport):
            return
        self.transport = transport
        self.caller = transport_spiffe_id(transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        answers: list[bytes] = []
        close = False
        for item in self.reader.feed(data):
            if isinstance(item, Malformed):
                answers.append(_response(item.status, "", item.reason.encode(), close=True))
                close = True
                break
            answers.append(self.front.answer(item, self.caller))
            if item.close:
                close = True
                break
        if answers:
            self.active = time.monotonic()
        if self.front.draining and answers and not close:
            answers[-1] = answers[-1].replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
            close = True
        self.transport.write(b"".join(answers))
        if close:
            self.reader.failed = True
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.reader.failed = True
            self.transport.close()

    def end_if_idle(self, now: float, seconds: float) -> bool:
        """Closed when no request came for `seconds` (every answer is written as its request
        is read, so none is pending)."""
        if self.transport is None or now - self.active < seconds:
            return False
        self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.release(self)
        self.transport = None


async def serve_authz_http(
    front: AuthzHttpFront,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """Listen for sidecars on `host`:`port`: with `tls` (client certificates required), or
    plaintext on a loopback address only. `sock`: a socket already listening on that address
    to accept from instead (the ext_authz workers share the control plane's); closing the
    server closes this process's descriptor of it only."""
    if tls is None and not _is_loopback(host):
        raise ValueError(f"the plaintext ext_authz HTTP front must listen on loopback, not {host}")
    if tls is not None and tls.verify_mode != ssl.CERT_REQUIRED:
        raise ValueError("the ext_authz HTTP front requires client certificates")
    loop = asyncio.get_running_loop()
    where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
    if tls is None:
        return await loop.create_server(front.protocol, **where)
    return await loop.create_server(front.protocol, ssl=tls, ssl_handshake_timeout=10, **where)


def front_tls(chain: Path, key: Path, roots_pem: bytes) -> ServerTls:
    """The front's TLS: ALPN h2 (gRPC Check) or HTTP/1.1, a client certificate chaining to the
    roots required, following the server certificate's renewal and the roots' rotation."""
    return ServerTls(
        chain, key, roots_pem, client_certificate=ssl.CERT_REQUIRED, alpn=(H2, "http/1.1")
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
