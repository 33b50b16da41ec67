"""The control plane's small HTTP endpoint: `GET /healthz` → JSON (status ok|degraded, policy
version, the errors of a rejected change, a reload in progress, NACKs, per-sidecar xDS state),
plus whatever other routes the control plane adds (`routes[path] = handler`; e.g. `/flows`).

It answers without authentication (loopback by default), so any local user may connect. What
they can hold is bounded — the process's descriptors are shared with the node API, ADS and the
policy directory's scan — and fairly, so a probe always gets through:
- at most `MAX_CONNECTIONS` are open at once; a connection beyond that is served, and the
  connection that has waited longest for its own request is closed to make room (else the
  oldest whose reply is still being written): a flood of slow requests cannot starve a
  liveness probe, which sends its request at once and is answered before it is the oldest;
- a request line with its headers must arrive within `REQUEST_SECONDS` in all;
- at most `MAX_STREAMS` streaming replies (`/flows?follow=1`, the console's events) are open;
  a new one closes the oldest, whose client sees its stream end.
`counters()` says how many are open and how many were closed to make room (in `/healthz`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from meshwarden._policies import Policies
    from meshwarden._xds import Nack

MAX_CONNECTIONS = 256  # open at once, streaming replies included
MAX_STREAMS = 64  # streaming replies open at once (of MAX_CONNECTIONS)
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


class Phase(StrEnum):
    """Where a connection of the endpoint is: the order in which a full endpoint closes them."""

    READING = "reading"  # its request line and headers (closed first: a probe's is quick)
    ANSWERING = "answering"  # its reply is computed or written
    STREAMING = "streaming"  # a streaming reply (bounded by MAX_STREAMS of its own)


class _Connection:
    """One open connection: its task (the one serving it), its transport and its phase."""

    def __init__(self, task: asyncio.Task[Any], writer: asyncio.StreamWriter) -> None:
        self.task, self.writer = task, writer
        self.phase = Phase.READING

    def close(self) -> None:
        """Now: the descriptor is freed at once and the task serving it ends."""
        self.writer.transport.abort()
        self.task.cancel()


class HealthEndpoint:
    def __init__(self, host: str, port: int, report: Callable[[], dict[str, Any]]) -> None:
        self.host, self.port = host or "127.0.0.1", port
        self._report = report
        self.routes: dict[str, Route] = {"/healthz": lambda params: Reply.json(self._report())}
        self.async_routes: dict[str, AsyncRoute] = {}
        self.guard: Guard | None = None
        self.headers: tuple[tuple[str, str], ...] = ()  # sent with every reply
        self._server: asyncio.AbstractServer | None = None
        self._open: dict[asyncio.Task[Any], _Connection] = {}  # oldest first
        self.evicted = dict.fromkeys(Phase, 0)  # closed to make room, by their phase then

    @property
    def open(self) -> int:
        """Connections being served."""
        return len(self._open)

    def counters(self) -> dict[str, Any]:
        """For `/healthz`: connections open (streams among them) and closed to make room."""
        streams = sum(c.phase is Phase.STREAMING for c in self._open.values())
        evicted = {phase.value: count for phase, count in self.evicted.items()}
        return {"open": self.open, "streams": streams, "evicted": evicted}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        serving = [connection.task for connection in self._open.values()]
        for task in serving:
            task.cancel()
        # let cancelled connections close while the loop still runs
        await asyncio.gather(*serving, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.open >= MAX_CONNECTIONS:
            self._evict(Phase.READING) or self._evict(Phase.ANSWERING)
        connection = self._open[task] = _Connection(task, writer)
        try:
            await self._answer(reader, connection)
        except asyncio.CancelledError:
            # closed to make room, or the endpoint stops: this task serves this connection
            # only and ends here (Python 3.11's asyncio.start_server logs a traceback for a
            # connection task that ends cancelled: one per eviction, a flood in the log)
            pass
        finally:
            self._open.pop(task, None)

    def _evict(self, phase: Phase) -> bool:
        """Close the oldest connection in `phase`; False when there is none."""
        for task, connection in self._open.items():
            if connection.phase is phase:
                del self._open[task]
                self.evicted[phase] += 1
                connection.close()
                return True
        return False

    async def _answer(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        writer = connection.writer
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                request = await reader.readline()
                headers = await self._headers(reader)
            connection.phase = Phase.ANSWERING
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
                await self._send_stream(reply.stream, connection)
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

    async def _send_stream(self, chunks: AsyncIterator[bytes], connection: _Connection) -> None:
        """Send chunks until the stream ends, its client goes away, a newer stream takes its
        place (beyond `MAX_STREAMS`) or the endpoint stops."""
        connection.phase = Phase.STREAMING
        streams = sum(c.phase is Phase.STREAMING for c in self._open.values())
        if streams > MAX_STREAMS:
            self._evict(Phase.STREAMING)
        try:
            async for chunk in chunks:
                connection.writer.write(chunk)
                await connection.writer.drain()
        except asyncio.CancelledError:
            pass  # closed to make room, or the endpoint stops
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
