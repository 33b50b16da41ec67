"""The control plane's small HTTP endpoint: `GET /healthz` → JSON (status ok|degraded, policy
version, the errors of a rejected change, a reload in progress, NACKs, per-sidecar xDS state),
plus whatever other routes the control plane adds (`routes[path] = handler`; e.g. `/flows`).

It answers without authentication (loopback by default), so any local user may connect: at most
`MAX_CONNECTIONS` are open at once (beyond that a connection is closed at once), and a
request line with its headers must arrive within `REQUEST_SECONDS` in all, so no one holds the
process's descriptors — shared with the node API, ADS and the policy directory's scan — by
connecting slowly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from meshwarden._policies import Policies
    from meshwarden._xds import Nack

MAX_CONNECTIONS = 256  # open at once, streaming replies included
REQUEST_SECONDS = 5.0  # for the request line and every header, together
MAX_HEADERS = 100  # header fields kept (more are read and dropped)


def _stamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")


def health_report(
    policies: Policies,
    nacks: Sequence[Nack],
    sidecars: dict[str, Any] | None,
    build_errors: Sequence[str] = (),
    sidecar_problems: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`/healthz`: `degraded` while the last policy change stands rejected, some sidecar
    rejected its configuration (a NACK not replaced by an accepted version), a workload's
    configuration could not be built or a connected sidecar cannot work as configured
    (`sidecar_problems`: workload → why). `sidecars` None leaves the per-sidecar view out."""
    status = policies.status
    started = policies.reloading_since
    if started is not None:
        reload = {"state": "compiling", "since": _stamp(started)}
    else:
        reload = {"state": "settling" if policies.settling else "idle"}
    healthy = status.healthy and not nacks and not build_errors and not sidecar_problems
    report = {
        "status": "ok" if healthy else "degraded",
        "policyVersion": status.version,
        "lastChangeRejected": bool(status.errors),
        "errors": [*status.errors, *build_errors],
        "reload": reload,
        "nacks": [nack.to_json() for nack in nacks],
    }
    if sidecars is not None:
        report["sidecars"] = sidecars
    if sidecar_problems:
        report["sidecarProblems"] = dict(sidecar_problems)
    return report


@dataclass(frozen=True)
class Reply:
    """What a route answers: a body, or a `stream` of chunks sent until it ends or the client
    goes away (no content-length; the connection closes after it)."""

    body: bytes
    status: str = "200 OK"
    content_type: str = "application/json"
    stream: AsyncIterator[bytes] | None = None
    headers: tuple[tuple[str, str], ...] = ()  # more response headers (e.g. the console's CSP)

    @classmethod
    def json(cls, value: Any, status: str = "200 OK") -> Reply:
        return cls(json.dumps(value, separators=(",", ":")).encode(), status)  # C encoder


Route = Callable[[dict[str, str]], Reply]
"""A handler: the query parameters (last value of each) → the reply."""

AsyncRoute = Callable[[dict[str, str]], Awaitable[Reply]]
"""A handler whose reply needs I/O or a worker thread first (`async_routes[path] = handler`)."""

Guard = Callable[[dict[str, str]], Reply | None]
"""Looks at a request's headers (lower-case names) first: a reply refuses it, None lets it in."""


class HealthEndpoint:
    def __init__(self, host: str, port: int, report: Callable[[], dict[str, Any]]) -> None:
        self.host, self.port = host or "127.0.0.1", port
        self._report = report
        self.routes: dict[str, Route] = {"/healthz": lambda params: Reply.json(self._report())}
        self.async_routes: dict[str, AsyncRoute] = {}
        self.guard: Guard | None = None
        self.headers: tuple[tuple[str, str], ...] = ()  # sent with every reply
        self._server: asyncio.AbstractServer | None = None
        self._streams: set[asyncio.Task[None]] = set()
        self.open = 0  # connections being served
        self.refused = 0  # connections closed at once because MAX_CONNECTIONS were open

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        streams = list(self._streams)
        for task in streams:
            task.cancel()
        # let cancelled streams close their connections while the loop still runs
        await asyncio.gather(*streams, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()  # unread: no answer would survive the reset anyway
            return
        self.open += 1
        try:
            await self._answer(reader, writer)
        finally:
            self.open -= 1

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                request = await reader.readline()
                headers = await self._headers(reader)
            refused = self.guard(headers) if self.guard is not None else None
            routed = refused or self._route(request.decode("latin-1").split())
            reply = routed if isinstance(routed, Reply) else await routed
            head = f"HTTP/1.1 {reply.status}\r\ncontent-type: {reply.content_type}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in (*self.headers, *reply.headers))
            if reply.stream is None:
                head += f"content-length: {len(reply.body)}\r\n"
            writer.write(f"{head}connection: close\r\n\r\n".encode() + reply.body)
            await writer.drain()
            if reply.stream is not None:
                await self._send_stream(reply.stream, writer)
        except (TimeoutError, ConnectionError, ValueError):  # ValueError: a line over 64 KiB
            pass
        finally:
            writer.close()

    @staticmethod
    async def _headers(reader: asyncio.StreamReader) -> dict[str, str]:
        """The request's header fields (names lower-case; at most `MAX_HEADERS` are kept)."""
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if len(headers) < MAX_HEADERS:
                headers[name.strip().lower()] = value.strip()
        return headers

    def _route(self, parts: list[str]) -> Reply | Awaitable[Reply]:
        if len(parts) < 2 or parts[0] != "GET":
            return Reply.json({"error": "only GET"}, "405 Method Not Allowed")
        url = urlsplit(parts[1])
        handler = self.routes.get(url.path) or self.async_routes.get(url.path)
        if handler is None:
            known = ", ".join(sorted([*self.routes, *self.async_routes]))
            return Reply.json({"error": f"no route {url.path}; try GET {known}"}, "404 Not Found")
        return handler(dict(parse_qsl(url.query)))

    async def _send_stream(
        self, chunks: AsyncIterator[bytes], writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            async for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
        except asyncio.CancelledError:
            pass  # the endpoint stops
        finally:
            self._streams.discard(task)
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
