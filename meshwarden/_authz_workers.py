"""`server --ext-authz-workers N`: the ext_authz front (HTTP/1.1, and gRPC Check where ALPN
chose h2) in N worker processes, off the control plane's event loop (which ADS pushes keep busy
for seconds on a large mesh).

The control plane binds and listens on the front's address and never accepts there; each
worker (`_authz_worker`) inherits that listening socket and accepts from it while it serves. So
the workers share one accept queue: a worker that stops accepting (retired, or crashed) leaves
the connections queued behind it to the others instead of taking them down with its own
listener (with a listener per worker and SO_REUSEPORT, the connections in a retiring worker's
queue were reset, and each was a check failing closed). A worker gets, over its own inherited
socket pair
(`_authz_pipe`), the trust bundle's roots and the policy files' bytes at start, then each
certificate renewal or CA rotation; it reads the server certificate and key from the data dir's
0600 files.

A worker serves one policy version: on a change (`publish`, as the pushes to the sidecars
begin) each of the N slots gets a new worker, which compiles the change before it listens;
once it does, the slot's older workers are retired: they stop listening, answer each of their
connections' next check (the one being read included) with `connection: close`, leave idle
connections for the sidecars to close (the sidecars' idle timeout is shorter than a retired
worker's wait) and exit. So no check waits behind a compile in the process that answers it;
from the handover on, new connections reach the new version, and an old connection gets at
most one more answer from the old one.

Fail closed and never orphaned: a worker decides nothing before it has policies; one that exits
unretired is started again (after `RESTART_SECONDS`) with the current roots and policies;
workers die with the control plane (PR_SET_PDEATHSIG in the worker, and the pipe's end), and
`stop` ends them. `status()` says, per slot, the serving worker's pid, the policy version it
decides with, whether that is the control plane's, how long it compiled and how many checks
it answered (both protocols, reported every half second); `restarts` counts replaced
crashes (GET /healthz `extAuthz`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshwarden._authz_pipe import Channel
from meshwarden._authz_worker import PREPARE_NICE
from meshwarden._policy_files import DirectoryContents

log = logging.getLogger(__name__)
DEFAULT_WORKERS = 1  # `server`: checks on one core, the rest on the other (docs/benchmarks.md)
MAX_WORKERS = 64
RESTART_SECONDS = 0.2  # between a worker's exit and its replacement
MAX_RESTART_SECONDS = 10.0  # ... doubling while replacements exit without listening
START_TIMEOUT = 60.0  # for a worker to listen (a cold Python start on a loaded machine)
BACKLOG = 4096  # connections queued for the workers (a burst of sidecars, a handover)


@dataclass(frozen=True)
class WorkerFiles:
    """What a worker reads itself: the server certificate chain and key (0600 files)."""

    chain: Path
    key: Path


@dataclass(eq=False)
class _Worker:
    slot: int
    generation: int
    process: subprocess.Popen[bytes]
    channel: Channel
    version: str = ""
    errors: list[str] = field(default_factory=list)
    compile_s: float | None = None  # how long compiling its policies took
    checks: int = 0  # checks it answered (HTTP/1.1 and gRPC), as of its last flush
    connections: int = 0  # open on its front, as of its last flush
    idle_ended: int = 0  # connections its front ended for want of requests
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    retired: bool = False


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
        idle_seconds: float | None = None,
    ) -> None:
        self.count = count
        self.idle_seconds = idle_seconds  # the front's idle timeout (None: its default)
        self.host, self.port = listen
        self.files = files
        self.policies_name = policies_name
        self.record = record
        self.otlp_endpoint = otlp_endpoint
        self.roots_pem = b""
        self.contents: DirectoryContents | None = None
        self.version = ""  # the control plane's policy version
        self.restarts = 0
        self._failures: dict[int, int] = {}  # slot → workers in a row that exited unlistening
        self._renewing: set[int] = set()  # slots whose replacement is on its way
        self._stale: set[int] = set()  # ... and changed again meanwhile
        self.active: dict[int, _Worker] = {}  # slot → the worker serving it
        self.live: set[_Worker] = set()  # every worker process: starting, active, retiring
        self._generation = 0
        self._listener: socket.socket | None = None  # accepted from by the workers only
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(
        self, roots_pem: bytes, contents: DirectoryContents | None, version: str
    ) -> int:
        """Reserve the address, start every worker with the policies the control plane serves
        now and wait until each listens; the port."""
        self.roots_pem, self.contents, self.version = roots_pem, contents, version
        self._listener = _listening(self.host, self.port)
        self.port = int(self._listener.getsockname()[1])
        for slot in range(self.count):
            if not await self._replace(slot):
                raise OSError(f"ext_authz worker {slot} did not listen on {self._address}")
        return self.port

    def publish(self, contents: DirectoryContents | None, version: str) -> None:
        """A policy change (as it goes to the sidecars): new workers compile it, then take over
        from the ones serving the previous version."""
        if contents is None:
            return
        self.contents, self.version = contents, version
        for slot in range(self.count):
            if slot in self._renewing:  # one is compiling an older change: one more after it
                self._stale.add(slot)
            else:
                self._renewing.add(slot)
                self._background(self._renew(slot))

    async def _renew(self, slot: int) -> None:
        """Replace the slot's worker, again while changes came during the replacement: a burst
        of changes starts one worker per slot at a time, not one per change."""
        try:
            while not self._stopping:
                self._stale.discard(slot)
                await self._replace(slot)
                if slot not in self._stale:
                    return
        finally:
            self._renewing.discard(slot)

    def update_tls(self, roots_pem: bytes | None) -> None:
        """New roots (a CA rotation), or None: the server certificate was renewed."""
        if roots_pem is not None:
            self.roots_pem = roots_pem
        message = ("roots", roots_pem) if roots_pem is not None else ("renewed", None)
        for worker in self.live:
            worker.channel.send(message)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "slot": w.slot,
                "pid": w.process.pid,
                "version": w.version or None,
                "current": bool(w.version) and w.version == self.version,
                "errors": w.errors,
                "lastCompileSeconds": None if w.compile_s is None else round(w.compile_s, 3),
                "checks": w.checks,
                "connections": w.connections,
                "idleEnded": w.idle_ended,
            }
            for w in sorted(self.active.values(), key=lambda w: w.slot)
        ]

    @property
    def current(self) -> bool:
        """Every slot is served by a worker with the control plane's policy version."""
        return len(self.active) == self.count and all(s["current"] for s in self.status())

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, slot: int) -> bool:
        """Start a worker for `slot` with the current roots and policies; once it listens, it
        serves the slot and the older ones of the slot are retired. False if it never did."""
        worker = await self._spawn(slot)
        waits = [asyncio.ensure_future(e.wait()) for e in (worker.listening, worker.exited)]
        await asyncio.wait(waits, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        if not worker.listening.is_set():
            if self._stopping:
                return False
            log.error("ext_authz worker %d (pid %d) did not listen", slot, worker.process.pid)
            worker.process.kill()
            return False
        self._failures[slot] = 0
        serving = self.active.get(slot)
        if serving is not None and serving.generation > worker.generation:
            self._retire(worker)  # a newer one took over while this one compiled
            return True
        self.active[slot] = worker
        for older in [w for w in self.live if w.slot == slot and w.generation < worker.generation]:
            self._retire(older)
        return True

    def _retire(self, worker: _Worker) -> None:
        if not worker.retired:
            worker.retired = True
            worker.channel.send(("retire", None))

    async def _spawn(self, slot: int) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        assert self._listener is not None
        shared = self._listener.fileno()
        try:
            process = subprocess.Popen(
                self._command(slot, theirs.fileno(), shared), pass_fds=(theirs.fileno(), shared)
            )
        finally:
            theirs.close()
        self._generation += 1
        channel = await Channel.open(ours, parent=True)
        worker = _Worker(slot, self._generation, process, channel)
        self.live.add(worker)
        worker.channel.send(("start", (self.roots_pem, self.contents)))
        self._background(self._follow(worker))
        return worker

    def _command(self, slot: int, fd: int, listener: int) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "meshwarden._authz_worker",
            f"--pipe={fd}",
            f"--parent={os.getpid()}",
            f"--listen={self._address}",
            f"--listener={listener}",
            f"--chain={self.files.chain}",
            f"--key={self.files.key}",
            f"--policies={self.policies_name}",
            f"--index={slot}",
            f"--prepare-nice={self._prepare_nice(slot)}",
        ]
        if self.otlp_endpoint:
            command.append(f"--otlp-endpoint={self.otlp_endpoint}")
        if self.idle_seconds is not None:
            command.append(f"--idle-seconds={self.idle_seconds}")
        return command

    def _prepare_nice(self, slot: int) -> int:
        """Beside a worker serving the slot, prepare without taking its CPU (nice 19); with
        none, every check on the slot fails closed until this one listens, and after one that
        never listened (starved past START_TIMEOUT on a busy host, or exited) the change would
        wait for an idle host: normal priority."""
        beside = slot in self.active and not self._failures.get(slot, 0)
        return PREPARE_NICE if beside else 0

    @property
    def _address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def _follow(self, worker: _Worker) -> None:
        """Read what the worker says until its pipe closes; replace it if it was serving (or
        about to) and was not retired."""
        try:
            while True:
                kind, value = await worker.channel.receive()
                self._heard(worker, kind, value)
        except EOFError:
            pass
        worker.channel.close()
        code = await asyncio.to_thread(worker.process.wait)
        worker.exited.set()
        self.live.discard(worker)
        if worker.retired or self._stopping:
            return
        print(
            f"meshwarden server: ext_authz worker {worker.slot} (pid {worker.process.pid}) "
            f"exited with {code}; starting another",
            file=sys.stderr,
            flush=True,
        )
        if self.active.get(worker.slot) is worker:
            del self.active[worker.slot]
        newer = [w for w in self.live if w.slot == worker.slot and w.generation > worker.generation]
        if newer:  # one is already on its way for this slot
            return
        failures = self._failures.get(worker.slot, 0) + (not worker.listening.is_set())
        self._failures[worker.slot] = failures
        await asyncio.sleep(min(MAX_RESTART_SECONDS, RESTART_SECONDS * 2**failures))
        if not self._stopping:
            self.restarts += 1
            await self._replace(worker.slot)

    def _heard(self, worker: _Worker, kind: str, value: Any) -> None:
        if kind == "listening":
            worker.listening.set()
        elif kind == "version":
            worker.version, worker.errors, worker.compile_s = value
        elif kind == "connections":
            worker.connections, worker.idle_ended = value
        elif kind == "checks":
            for labels, durations in value:
                worker.checks += len(durations)
                for seconds in durations:
                    self.record(seconds, labels)

    async def stop(self) -> None:
        """End every worker (closing its pipe ends it; SIGKILL after 5 s)."""
        self._stopping = True
        for worker in self.live:
            worker.channel.close()
        for worker in list(self.live):
            try:
                await asyncio.to_thread(worker.process.wait, 5)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                await asyncio.to_thread(worker.process.wait)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            self._listener.close()


def _listening(host: str, port: int) -> socket.socket:
    """The front's listening socket, which only the workers accept from (see the module
    docstring): connections queue in it, also while no worker accepts yet."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(BACKLOG)
    except OSError:
        listener.close()
        raise
    listener.setblocking(False)
    return listener
