"""One ext_authz worker: the HTTP front (`extAuthz.transport: http`) in a process of its own,
started and fed by the control plane (`_authz_workers.AuthzWorkers`), never by hand.

    python -m meshwarden._authz_worker --pipe FD --parent PID --listen HOST:PORT \\
        --chain FILE --key FILE --policies NAME [--otlp-endpoint URL] [--index I]

A worker serves one policy version for its whole life: a policy change starts new workers,
which compile it before they listen, and then retires the old ones (`retire`: stop listening,
hand the connections over), so no check ever waits behind a compile in the process that
answers it.

What it gets, and how:
- its pipe (`--pipe`, a Unix socket pair end it inherited): `start` — the trust bundle's roots
  and the policy files' bytes the control plane's mesh was compiled from (compiled here by the
  same `Policies` code, so the version is the same content hash) —, then each CA rotation
  (`roots`), server certificate renewal (`renewed`), and `retire`;
- its key material: the server certificate and key from the data dir's 0600 files, read again
  at each renewal — never from a socket;
- its listener: bound by itself with SO_REUSEPORT on the control plane's address (the control
  plane holds the address bound, not listening, so no other user can take it).

Fail closed: a worker started without policies (none were valid yet) denies every check (the
resolver has no mesh); a worker whose pipe closes (the control plane exited or dropped it)
exits, and PR_SET_PDEATHSIG kills it if the control plane dies by SIGKILL. What goes back on
the pipe: the compiled version (and the seconds compiling took), `listening`, and batches of
check durations the control plane records into its own `meshwarden.authz.check.duration`.
Decision spans are exported from here to the same OTLP collector as the control plane's.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import io
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meshwarden._authz_pipe import Channel, CheckBatch
from meshwarden._policies import Policies
from meshwarden._policy_files import DirectoryContents
from meshwarden.xds import (
    Authorization,
    AuthzHttpFront,
    front_tls,
    registered_workload,
    serve_authz_http,
)

_PR_SET_PDEATHSIG = 1
FLUSH_SECONDS = 0.5  # how often check durations go to the control plane
DRAIN_SECONDS = 5.0  # a retired worker's longest wait for its connections to be handed over


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


def die_with_parent(parent: int) -> None:
    """SIGKILL when the control plane dies (even by SIGKILL); exit now if it already did."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(0)


class CannotListen(Exception):
    pass


class _Unprinted(io.StringIO):
    def write(self, text: str) -> int:
        return len(text)


def _verified_caller(caller: Any) -> str | None:
    """The HTTP front's caller is the connection's verified SPIFFE ID (or None)."""
    return caller if isinstance(caller, str) else None


class Worker:
    """The front, its policies and its pipe to the control plane."""

    def __init__(self, args: argparse.Namespace, channel: Channel) -> None:
        self.args = args
        self.channel = channel
        self.source = PushedContents()
        # what the control plane already printed is not printed again (errors go back on the pipe)
        self.policies = Policies(Path(args.policies), _Unprinted(), source=self.source)
        self.batch = CheckBatch()
        self.authorization = Authorization(
            registered_workload(lambda: self.policies.mesh, _verified_caller),
            on_check=self._checked,
        )

    def _checked(self, seconds: float, labels: Mapping[str, str]) -> None:
        self.batch.add(seconds, labels)

    async def run(self) -> None:
        kind, value = await self.channel.receive()
        if kind != "start":
            raise SystemExit(f"ext_authz worker: expected `start` first, got {kind}")
        roots, contents = value
        if contents is not None:  # compiled before listening: never serving a half-made mesh
            self._compile(contents)
        tls = front_tls(Path(self.args.chain), Path(self.args.key), roots)
        host, _, port = self.args.listen.rpartition(":")
        front = AuthzHttpFront(self.authorization)
        try:
            server = await serve_authz_http(
                front, host.strip("[]"), int(port), tls.listening, reuse_port=True
            )
        except OSError as exc:  # in use by another user, or not an address of this host
            why = exc.strerror or exc
            raise CannotListen(f"cannot listen on {self.args.listen}: {why}") from None
        self.channel.send(("listening", os.getpid()))
        flushing = asyncio.create_task(self._flush_forever())
        try:
            while True:
                kind, value = await self.channel.receive()
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
        """Compile what the control plane sent and say which version this worker decides with
        (and how long compiling took)."""
        self.source.push(contents)
        started = time.perf_counter()
        self.policies.reload_if_changed()
        status = self.policies.status
        took = time.perf_counter() - started
        self.channel.send(("version", (status.version, status.errors[:5], took)))

    def _flush(self) -> None:
        taken = self.batch.take()
        if taken:
            self.channel.send(("checks", taken))

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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meshwarden-authz-worker", description=__doc__)
    parser.add_argument("--pipe", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--chain", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--policies", required=True)
    parser.add_argument("--otlp-endpoint")
    parser.add_argument("--index", type=int, default=0)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> int:
    channel = await Channel.open(socket.socket(fileno=args.pipe))
    worker = Worker(args, channel)
    try:
        await worker.run()
    except EOFError:  # the control plane closed the pipe: stop
        pass
    except CannotListen as exc:
        print(f"meshwarden server: error: ext_authz worker: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the control plane, which stops us
    from meshwarden._telemetry import installed

    with installed("meshwarden", args.otlp_endpoint):
        return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
