"""`server --ext-authz-workers N`: the ext_authz HTTP front in N worker processes, off the
control plane's event loop (which ADS pushes keep busy for seconds on a large mesh).

The control plane binds the front's address with SO_REUSEPORT and keeps it bound without
listening (so the port is known, also for port 0, and no other user can bind it); each worker
(`_authz_worker`) binds the same address with SO_REUSEPORT and listens, and the kernel spreads
new connections over the listening workers. Each worker gets, over its own inherited socket
pair (`_authz_pipe`), the trust bundle's roots, every policy change as the control plane applies
it, and each certificate renewal or CA rotation; it reads the server certificate and key from
the data dir's 0600 files.

Fail closed and never orphaned: a worker decides nothing before its first policies; one that
exits is started again (after `RESTART_SECONDS`) with the current roots and policies; workers
die with the control plane (PR_SET_PDEATHSIG in the worker, and the pipe's end), and `stop`
ends them. `status()` says, per worker, its pid, the policy version it decides with, whether
that is the control plane's, and how often it was restarted (GET /healthz `extAuthz`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshwarden._authz_pipe import Channel
from meshwarden._policy_files import DirectoryContents

log = logging.getLogger(__name__)
DEFAULT_WORKERS = 1  # `server`: checks on one core, the rest on the other (docs/benchmarks.md)
MAX_WORKERS = 64
RESTART_SECONDS = 0.2  # between a worker's exit and its replacement
START_TIMEOUT = 60.0  # for a worker to listen (a cold Python start on a loaded machine)


@dataclass(frozen=True)
class WorkerFiles:
    """What a worker reads itself: the server certificate chain and key (0600 files)."""

    chain: Path
    key: Path


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    channel: Channel
    version: str = ""
    errors: list[str] = field(default_factory=list)
    compile_s: float | None = None  # how long applying the last change took
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.time)


class AuthzWorkers:
    """N ext_authz workers on one address (see the module docstring)."""

    def __init__(
        self,
        count: int,
        listen: tuple[str, int],
        files: WorkerFiles,
        policies_name: str,
        record: Callable[[float, Mapping[str, str]], None],
        otlp_endpoint: str | None = None,
    ) -> None:
        self.count = count
        self.host, self.port = listen
        self.files = files
        self.policies_name = policies_name
        self.record = record
        self.otlp_endpoint = otlp_endpoint
        self.roots_pem = b""
        self.contents: DirectoryContents | None = None
        self.version = ""  # the control plane's policy version
        self.restarts = 0
        self.workers: dict[int, _Worker] = {}
        self._reserved: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self, roots_pem: bytes) -> int:
        """Reserve the address, start every worker and wait until each listens; the port."""
        self.roots_pem = roots_pem
        self._reserved = _reserve(self.host, self.port)
        self.port = int(self._reserved.getsockname()[1])
        for index in range(self.count):
            await self._spawn(index)
        return self.port

    def publish(self, contents: DirectoryContents | None, version: str) -> None:
        """A policy change, to every worker (as it goes to the sidecars)."""
        if contents is None:
            return
        self.contents, self.version = contents, version
        for worker in self.workers.values():
            worker.channel.send(("policies", contents))

    def update_tls(self, roots_pem: bytes | None) -> None:
        """New roots (a CA rotation), or None: the server certificate was renewed."""
        if roots_pem is not None:
            self.roots_pem = roots_pem
        message = ("roots", roots_pem) if roots_pem is not None else ("renewed", None)
        for worker in self.workers.values():
            worker.channel.send(message)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "index": w.index,
                "pid": w.process.pid,
                "listening": w.listening.is_set(),
                "version": w.version or None,
                "current": bool(w.version) and w.version == self.version,
                "errors": w.errors,
                "lastCompileSeconds": None if w.compile_s is None else round(w.compile_s, 3),
            }
            for w in sorted(self.workers.values(), key=lambda w: w.index)
        ]

    @property
    def current(self) -> bool:
        """Every worker listens and decides with the control plane's policy version."""
        return len(self.workers) == self.count and all(s["current"] for s in self.status())

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = subprocess.Popen(
                self._command(index, theirs.fileno()), pass_fds=(theirs.fileno(),)
            )
        finally:
            theirs.close()
        worker = _Worker(index, process, await Channel.open(ours))
        self.workers[index] = worker
        worker.channel.send(("roots", self.roots_pem))
        if self.contents is not None:
            worker.channel.send(("policies", self.contents))
        task = asyncio.get_running_loop().create_task(self._follow(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait_for(worker.listening.wait(), START_TIMEOUT)
        except TimeoutError:
            process.kill()
            raise OSError(f"ext_authz worker {index} did not listen on {self._address}") from None

    def _command(self, index: int, fd: int) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "meshwarden._authz_worker",
            f"--pipe={fd}",
            f"--parent={os.getpid()}",
            f"--listen={self._address}",
            f"--chain={self.files.chain}",
            f"--key={self.files.key}",
            f"--policies={self.policies_name}",
            f"--index={index}",
        ]
        if self.otlp_endpoint:
            command.append(f"--otlp-endpoint={self.otlp_endpoint}")
        return command

    @property
    def _address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def _follow(self, worker: _Worker) -> None:
        """Read what the worker says until its pipe closes; then replace it."""
        try:
            while True:
                kind, value = await worker.channel.receive()
                self._heard(worker, kind, value)
        except EOFError:
            pass
        worker.channel.close()
        code = await asyncio.to_thread(worker.process.wait)
        if self._stopping:
            return
        log.warning(
            "ext_authz worker %d (pid %d) exited (%s); restarting it",
            worker.index,
            worker.process.pid,
            code,
        )
        print(
            f"meshwarden server: ext_authz worker {worker.index} (pid {worker.process.pid}) "
            f"exited with {code}; starting another",
            file=sys.stderr,
            flush=True,
        )
        self.workers.pop(worker.index, None)
        await asyncio.sleep(RESTART_SECONDS)
        if self._stopping:
            return
        self.restarts += 1
        try:
            await self._spawn(worker.index)
        except OSError as exc:  # retried by the next exit of the one that did not listen
            log.error("%s", exc)

    def _heard(self, worker: _Worker, kind: str, value: Any) -> None:
        if kind == "listening":
            worker.listening.set()
        elif kind == "version":
            worker.version, worker.errors, worker.compile_s = value
        elif kind == "checks":
            for labels, durations in value:
                for seconds in durations:
                    self.record(seconds, labels)

    async def stop(self) -> None:
        """End every worker (closing its pipe ends it; SIGKILL after 5 s)."""
        self._stopping = True
        for worker in self.workers.values():
            worker.channel.close()
        for worker in list(self.workers.values()):
            try:
                await asyncio.to_thread(worker.process.wait, 5)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                await asyncio.to_thread(worker.process.wait)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reserved is not None:
            self._reserved.close()


def _reserve(host: str, port: int) -> socket.socket:
    """The address bound with SO_REUSEPORT, not listening: the workers' share of it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((host, port))
    except OSError:
        reserved.close()
        raise
    return reserved
