"""Run asyncio servers of meshwarden in a background thread while the test talks to them with
real, synchronous clients (py-spiffe, grpc)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def public_tempdir() -> Path:
    """A directory other uids can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="meshwarden-it-", dir="/tmp"))
    path.chmod(0o755)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def run_as(uid: int, gid: int, code: str, env: dict[str, str] | None = None) -> str:
    """Run Python `code` in a child process under uid/gid (we are root); return its stdout."""
    command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    command += [sys.executable, "-c", code]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd="/",
    )
    if result.returncode != 0:
        raise AssertionError(f"child failed ({result.returncode}): {result.stderr}")
    return result.stdout.strip()


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _anon_inode_fds(kind: str) -> set[int]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"anon_inode:{kind}":
                found.add(int(fd))
        except OSError:
            continue
    return found


def inotify_fds() -> set[int]:
    """This process's open inotify instances (a per-user resource, 128 by default)."""
    return _anon_inode_fds("inotify")


def pidfds_open() -> int:
    """How many pidfds this process holds (the agent's endpoints hold one per connection)."""
    return len(_anon_inode_fds("[pidfd]"))
