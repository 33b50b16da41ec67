"""A tiny HTTP health endpoint: `GET /healthz` → JSON (status ok|degraded, policy version, the
errors of a rejected change, per-sidecar xDS state)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any


class HealthEndpoint:
    def __init__(self, host: str, port: int, report: Callable[[], dict[str, Any]]) -> None:
        self.host, self.port = host or "127.0.0.1", port
        self._report = report
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b""):
                pass
            parts = request.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/healthz":
                status, body = "200 OK", json.dumps(self._report(), indent=2).encode()
            else:
                status, body = "404 Not Found", b'{"error": "try GET /healthz"}'
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
