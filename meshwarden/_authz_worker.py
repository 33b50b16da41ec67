"""One ext_authz worker: the ext_authz front — HTTP/1.1 (`extAuthz.transport: http`) and gRPC
`Check` on the connections whose ALPN chose h2 — in a process of its own, started and fed by
the control plane (`_authz_workers.AuthzWorkers`), never by hand.

    python -m meshwarden._authz_worker --pipe FD --parent PID --listen HOST:PORT --listener FD \\
        --chain FILE --key FILE --policies NAME [--otlp-endpoint URL] [--index I] \\
        [--prepare-nice N]

A worker serves one policy version for its whole life: a policy change starts new workers,
which compile it before they listen, and then retires the old ones (`retire`: stop listening,
hand the connections over), so no check ever waits behind a compile in the process that
answers it. A worker started beside one serving its slot (a policy change) imports and
compiles in a thread of the lowest priority (nice 19): until it listens it takes no CPU the
serving workers or the control plane's push want. A slot's first worker (at start, or replacing
one that died), and one started after a worker that never listened (starved past the start
timeout), prepare at normal priority (`--prepare-nice 0`): nothing answers for the slot, or the
change waits, until it listens, and on a busy host nice 19 kept a worker from listening for
minutes.

What it gets, and how:
- its pipe (`--pipe`, a Unix socket pair end it inherited): `start` — the trust bundle's roots
  and the policy files' bytes the control plane's mesh was compiled from (compiled here by the
  same `Policies` code, so the version is the same content hash) —, then each CA rotation
  (`roots`), server certificate renewal (`renewed`), and `retire`;
- its key material: the server certificate and key from the data dir's 0600 files, read again
  at each renewal — never from a socket;
- its listener (`--listener`): the control plane's listening socket, inherited; every worker
  accepts from the same queue, so a worker that stops accepting leaves the queued connections
  to the others (`--listen` is its address, for messages).

Fail closed: a worker started without policies (none were valid yet) denies every check (the
resolver has no mesh); a worker whose pipe closes (the control plane exited or dropped it)
exits, and PR_SET_PDEATHSIG kills it if the control plane dies by SIGKILL. What goes back on
the pipe: the compiled version (and the seconds compiling took), `listening`, batches of
check durations the control plane records into its own `meshwarden.authz.check.duration`,
and the front's open connections and idle ones it ended (`/healthz` `extAuthz.workers[]`).
Decision spans are exported from here to the same OTLP collector as the control plane's.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1
PREPARE_NICE = 19  # the niceness of the thread that imports and compiles before listening,
# for a worker started beside one serving its slot (the default)


def die_with_parent(parent: int) -> None:
    """SIGKILL when the control plane dies (even by SIGKILL); exit now if it already did."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meshwarden-authz-worker", description=__doc__)
    parser.add_argument("--pipe", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--listener", type=int, required=True)
    parser.add_argument("--chain", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--policies", required=True)
    parser.add_argument("--otlp-endpoint")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--prepare-nice", type=int, default=PREPARE_NICE)
    parser.add_argument("--idle-seconds", type=float)  # the front's idle timeout (tests)
    return parser.parse_args(argv)


def prepared_at_low_priority(args: argparse.Namespace, pipe: socket.socket) -> Any:
    """Import the serving code and compile the policies in a thread at `--prepare-nice`: a
    new worker started while another serves its slot (a change) must not take CPU from it or
    from the control plane's push until it listens. Linux nice is per thread, so the main
    thread, which then serves, keeps its priority."""
    prepared: list[Any] = []
    failed: list[BaseException] = []

    def prepare() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), args.prepare_nice)
            from meshwarden._authz_serve import prepare as build

            prepared.append(build(args, pipe))
        except BaseException as exc:  # re-raised in the main thread
            failed.append(exc)

    thread = threading.Thread(target=prepare, name="prepare")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return prepared[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the control plane, which stops us
    pipe = socket.socket(fileno=args.pipe)
    try:
        worker = prepared_at_low_priority(args, pipe)
    except EOFError:  # the control plane went away before sending anything
        return 0
    from meshwarden._authz_serve import serve

    return int(serve(worker, pipe))


if __name__ == "__main__":
    sys.exit(main())
