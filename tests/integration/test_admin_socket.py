"""The control plane's admin socket (`DATA_DIR/admin.sock`, what `meshwarden token create`
talks to): the server's own uid is answered; another local user is kept out by the socket's
mode, and, should the mode ever be wrong, by the peer's uid read from the connection itself."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshwarden._admin import AdminSocket, admin_request

from .conftest import NOBODY_UID

REQUEST = {"op": "token.create", "node": "n1", "ttl_seconds": 60}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A directory another user may enter (so only the socket's own guards stand in the way)."""
    path = Path(tempfile.mkdtemp(prefix="mw-admin-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _as_nobody(socket_path: Path) -> str:
    """What `nobody` gets for REQUEST on the socket: the reply line, or the connect error."""
    code = (
        "import json, os, socket\n"
        f"os.setgroups([]); os.setgid({NOBODY_UID}); os.setuid({NOBODY_UID})\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(socket_path)!r})\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__); raise SystemExit\n"
        "try:\n"  # a refused caller may be answered and closed before it has sent
        f"    s.sendall(json.dumps({REQUEST!r}).encode() + b'\\n')\n"
        "except BrokenPipeError:\n"
        "    pass\n"
        "print(s.makefile().readline().strip())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def _serving(data_dir: Path, mode: int | None, nobody: bool) -> tuple[Any, list[Any]]:
    handled: list[dict[str, Any]] = []

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        handled.append(request)
        return {"token": "t-1"}

    admin = AdminSocket(data_dir, handle)
    await admin.start()
    try:
        if mode is not None:
            admin.path.chmod(mode)
        if nobody:
            reply: Any = await asyncio.to_thread(_as_nobody, admin.path)
        else:
            reply = await admin_request(data_dir, REQUEST)
        return reply, handled
    finally:
        admin.stop()


def test_the_servers_own_user_gets_an_answer(data_dir: Path) -> None:
    reply, handled = asyncio.run(_serving(data_dir, None, nobody=False))
    assert reply == {"token": "t-1"}
    assert handled == [REQUEST]
    assert not (data_dir / "admin.sock").exists()  # removed at stop


def test_the_socket_is_owner_only(data_dir: Path) -> None:
    async def mode() -> int:
        admin = AdminSocket(data_dir, lambda request: asyncio.sleep(0, {}))
        await admin.start()
        try:
            return stat.S_IMODE(os.stat(admin.path).st_mode)
        finally:
            admin.stop()

    assert asyncio.run(mode()) == 0o600
    reply, handled = asyncio.run(_serving(data_dir, None, nobody=True))
    assert reply == "PermissionError"
    assert handled == []


def test_another_user_is_refused_even_when_the_mode_lets_it_connect(data_dir: Path) -> None:
    reply, handled = asyncio.run(_serving(data_dir, 0o666, nobody=True))
    assert json.loads(reply) == {"error": f"uid {NOBODY_UID} may not administer this server"}
    assert handled == []
