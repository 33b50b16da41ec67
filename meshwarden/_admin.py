"""The control plane's admin socket (`DATA_DIR/admin.sock`, mode 0600): one JSON request per
connection from a process of the server's own uid or root (checked with SO_PEERCRED, not only
with the socket's mode), one JSON reply. `meshwarden token create` is its client."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshwarden.identities import IdentityError, peer_process

ADMIN_SOCKET = "admin.sock"

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class AdminSocket:
    """Serves `handle` on `DATA_DIR/admin.sock` from `start` until `stop`."""

    def __init__(self, data_dir: Path, handle: Handler) -> None:
        self.path = data_dir / ADMIN_SOCKET
        self._handle = handle
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            caller = peer_process(writer.get_extra_info("socket"))
            if caller.uid not in (0, os.getuid()):
                raise PermissionError(f"uid {caller.uid} may not administer this server")
            request = json.loads(await reader.readline())
            reply: dict[str, Any] = await self._handle(request)
        except (IdentityError, PermissionError, ValueError, KeyError) as exc:
            reply = {"error": str(exc)}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        writer.close()


async def admin_request(data_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request to a running server's admin socket."""
    path = data_dir / ADMIN_SOCKET
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(json.dumps(request).encode() + b"\n")
    await writer.drain()
    reply: dict[str, Any] = json.loads(await reader.readline())
    writer.close()
    return reply
