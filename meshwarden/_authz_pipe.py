"""The pipe between the control plane and one ext_authz worker: a Unix socket pair the worker
inherits (never a listener), carrying `(kind, value)` messages, each a 4-byte length and a
body. The control plane's messages are pickles (the worker reads only what the process that
started it wrote); the worker's are JSON: a worker parses sidecars' requests from the network,
so what it says is read as data, never as a pickle that could run code in the control plane.

Control plane → worker: `roots` (the trust bundle's PEM), `renewed` (read the server
certificate and key files again), `policies` (the `DirectoryContents` the control plane's mesh
was compiled from). Worker → control plane: `listening` (its pid), `version` ((version,
errors, seconds compiling) after each change), `checks` (a `CheckBatch.take()`).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import struct
from collections.abc import Mapping
from typing import Any

_LENGTH = struct.Struct("!I")
MAX_MESSAGE = 256 * 2**20  # a 10,000-policy directory is ≈ 10 MiB
MAX_BATCH = 50_000  # check durations held between two flushes; more are counted, not kept


def _pickled(message: tuple[str, Any]) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _json(message: tuple[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def _from_json(body: bytes) -> tuple[str, Any]:
    kind, value = json.loads(body)
    return str(kind), value


class Channel:
    """Framed messages over one end of the socket pair: the control plane's end (`parent`:
    it sends pickles and reads JSON) or the worker's (the other way round)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parent: bool
    ) -> None:
        self.reader, self.writer = reader, writer
        self._encode = _pickled if parent else _json
        self._decode = _from_json if parent else pickle.loads

    @classmethod
    async def open(cls, sock: socket.socket, parent: bool) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=2**20)
        return cls(reader, writer, parent)

    def send(self, message: tuple[str, Any]) -> None:
        body = self._encode(message)
        self.writer.write(_LENGTH.pack(len(body)) + body)

    async def receive(self) -> tuple[str, Any]:
        """The next message; EOFError when the other end is gone."""
        try:
            head = await self.reader.readexactly(_LENGTH.size)
            (length,) = _LENGTH.unpack(head)
            if length > MAX_MESSAGE:
                raise EOFError(f"a message of {length} bytes on the worker pipe")
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise EOFError("the other end closed the pipe") from exc
        kind, value = self._decode(body)
        return str(kind), value

    def close(self) -> None:
        self.writer.close()


def receive_blocking(sock: socket.socket) -> tuple[str, Any]:
    """The control plane's first message to a worker, read before any event loop runs;
    EOFError when the other end is gone."""

    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise EOFError("the other end closed the pipe")
            data += chunk
        return data

    (length,) = _LENGTH.unpack(exactly(_LENGTH.size))
    if length > MAX_MESSAGE:
        raise EOFError(f"a message of {length} bytes on the worker pipe")
    kind, value = pickle.loads(exactly(length))
    return str(kind), value


class CheckBatch:
    """Check durations grouped by their labels until the next flush (bounded)."""

    def __init__(self) -> None:
        self._durations: dict[tuple[tuple[str, str], ...], list[float]] = {}
        self._held = 0
        self.dropped = 0

    def add(self, seconds: float, labels: Mapping[str, str]) -> None:
        if self._held >= MAX_BATCH:
            self.dropped += 1
            return
        self._durations.setdefault(tuple(sorted(labels.items())), []).append(seconds)
        self._held += 1

    def take(self) -> list[tuple[dict[str, str], list[float]]]:
        taken = [(dict(key), values) for key, values in self._durations.items()]
        self._durations, self._held = {}, 0
        return taken
