"""What an ext_authz worker runs (`_authz_worker` is its entry point): its policies, compiled
before it listens, and the front (HTTP/1.1 and gRPC Check over h2) serving them until the
control plane retires it."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshwarden._authz_pipe import Channel, CheckBatch
from meshwarden._policies import Policies, settle_collections
from meshwarden._policy_files import DirectoryContents
from meshwarden.xds import (
    EXT_AUTHZ_FRONT_IDLE_SECONDS,
    EXT_AUTHZ_HTTP_IDLE_SECONDS,
    Authorization,
    AuthzHttpFront,
    front_tls,
    registered_workload,
    serve_authz_http,
)

FLUSH_SECONDS = 0.5  # how often check durations go to the control plane
# A retired worker's longest wait for its connections to be handed over: longer than the
# sidecars' idle timeout, so an idle connection is closed by its sidecar, not under it.
DRAIN_SECONDS = EXT_AUTHZ_HTTP_IDLE_SECONDS + 2.0


class PushedContents:
    """A `PolicySource` whose contents the control plane hands over: `poll` returns the last
    pushed contents once."""

    settle = 0.0
    settling = False

    def __init__(self) -> None:
        self._pending: DirectoryContents | None = None

    def push(self, contents: DirectoryContents) -> None:
        self._pending = contents

    def poll(self) -> DirectoryContents | None:
        pending, self._pending = self._pending, None
        return pending

    def forget(self) -> None:
        """Nothing is remembered between pushes."""


class CannotListen(Exception):
    pass


class _Unprinted(io.StringIO):
    def write(self, text: str) -> int:
        return len(text)


def _verified_caller(caller: Any) -> str | None:
    """The front's caller is the connection's verified SPIFFE ID (or None), for HTTP/1.1 and
    for every gRPC call on an h2 connection alike."""
    return caller if isinstance(caller, str) else None


class Worker:
    """The front, its policies and its pipe to the control plane."""

    def __init__(self, args: argparse.Namespace, roots: bytes, contents: Any) -> None:
        """Compile `contents` (None: no valid policies yet, every check is denied)."""
        self.args = args
        self.roots = roots
        self.channel: Channel | None = None
        self.source = PushedContents()
        # what the control plane already printed is not printed again (errors go back on the pipe)
        self.policies = Policies(Path(args.policies), _Unprinted(), source=self.source)
        self.batch = CheckBatch()
        self.authorization = Authorization(
            registered_workload(lambda: self.policies.mesh, _verified_caller),
            on_check=self._checked,
        )
        self.compiled: tuple[str, list[str], float] | None = None
        self.front: AuthzHttpFront | None = None
        self._told: tuple[int, int] | None = None  # the front's counts last sent
        if contents is not None:
            self._compile(contents)
        # What is alive now (the compiled policies: ≈ 250,000 objects at 1,000 workloads) is
        # left out of later collections: a full one walked it for 0.12 s and more, stalling
        # every check meanwhile (checks past 250 ms in bench_ext_authz_push.py).
        settle_collections()

    def _checked(self, seconds: float, labels: Mapping[str, str]) -> None:
        self.batch.add(seconds, labels)

    async def run(self, channel: Channel) -> None:
        self.channel = channel
        if self.compiled is not None:
            channel.send(("version", self.compiled))
        tls = front_tls(Path(self.args.chain), Path(self.args.key), self.roots)
        host, _, port = self.args.listen.rpartition(":")
        idle = getattr(self.args, "idle_seconds", None) or EXT_AUTHZ_FRONT_IDLE_SECONDS
        front = self.front = AuthzHttpFront(self.authorization, idle_seconds=idle)
        listener = socket.socket(fileno=self.args.listener)  # the control plane's, shared
        try:
            server = await serve_authz_http(
                front, host.strip("[]"), int(port), tls.listening, sock=listener
            )
        except OSError as exc:  # not a listening socket of this address
            why = exc.strerror or exc
            raise CannotListen(f"cannot listen on {self.args.listen}: {why}") from None
        channel.send(("listening", os.getpid()))
        flushing = asyncio.create_task(self._flush_forever())
        try:
            while True:
                kind, value = await channel.receive()
                if kind == "roots":
                    tls.update(roots_pem=value)
                elif kind == "renewed":
                    tls.update()
                elif kind == "retire":
                    await _drain(server, front)
                    return
        finally:
            flushing.cancel()
            server.close()
            self._flush()

    def _compile(self, contents: DirectoryContents) -> None:
        """Compile what the control plane sent; remember the version (and how long compiling
        took) to tell it."""
        self.source.push(contents)
        started = time.perf_counter()
        self.policies.reload_if_changed()
        status = self.policies.status
        self.compiled = (status.version, status.errors[:5], time.perf_counter() - started)

    def _flush(self) -> None:
        """Check durations, and the front's connection counts when they changed."""
        if self.channel is None:
            return
        taken = self.batch.take()
        if taken:
            self.channel.send(("checks", taken))
        front = self.front
        counts = None if front is None else (front.connections, front.idle_ended)
        if counts is not None and counts != self._told:
            self._told = counts
            self.channel.send(("connections", counts))

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self._flush()


async def _drain(server: asyncio.Server, front: AuthzHttpFront) -> None:
    """Stop listening (the worker that replaces this one already listens) and hand every
    connection over (`AuthzHttpFront.drain`); give up on the stragglers after DRAIN_SECONDS."""
    server.close()
    front.drain()
    deadline = time.monotonic() + DRAIN_SECONDS
    while front.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def prepare(args: argparse.Namespace, pipe: socket.socket) -> Worker:
    """The worker, its policies compiled, from the control plane's `start` message."""
    from meshwarden._authz_pipe import receive_blocking

    kind, value = receive_blocking(pipe)
    if kind != "start":
        raise SystemExit(f"ext_authz worker: expected `start` first, got {kind}")
    roots, contents = value
    return Worker(args, roots, contents)


def serve(worker: Worker, pipe: socket.socket) -> int:
    """Serve until retired or until the control plane closes the pipe; the exit status."""
    from meshwarden._telemetry import installed

    with installed("meshwarden", worker.args.otlp_endpoint):
        return asyncio.run(_serve(worker, pipe))


async def _serve(worker: Worker, pipe: socket.socket) -> int:
    try:
        await worker.run(await Channel.open(pipe, parent=False))
    except EOFError:  # the control plane closed the pipe: stop
        pass
    except CannotListen as exc:
        print(f"meshwarden server: error: ext_authz worker: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
