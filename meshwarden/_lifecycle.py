"""How a long-running command (`server`, `agent`, `up`) starts, prints `ready`, runs and stops:
exit status 2 for what the user must fix before starting again, 1 for a failure, 0 when
SIGINT or SIGTERM stopped it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from meshwarden.identities import StateError


async def serve_until_signalled(
    start: Callable[[], Awaitable[str]],
    run: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[], Awaitable[None]],
    command: str = "meshwarden",
) -> int:
    """`start` returns the text of the `ready` line; `run` runs until cancelled. A StateError
    at start (a corrupt or missing state file, an unsafe data dir) exits 2, any other failure 1.
    SIGINT/SIGTERM stop it at any time, also while `start` still waits (exit 0)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    starting: asyncio.Future[str] = asyncio.ensure_future(start())
    waiter: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # SIGINT/SIGTERM while starting (e.g. `up` waiting for ACKs)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await stop()
        return 0
    try:
        ready = starting.result()
    except (StateError, OSError) as exc:  # fix a file, the data dir, a port in use first
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"{command}: error: {reason}", file=sys.stderr)
        await stop()
        return 2
    except Exception as exc:  # the component failed to start: report, exit 1
        print(f"{command}: error: {exc}", file=sys.stderr)
        await stop()
        return 1
    print(f"ready {ready}", flush=True)
    task = asyncio.create_task(run())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    failure = task.exception() if task.done() and not task.cancelled() else None
    task.cancel()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await stop()
    if failure is not None:
        print(f"error: stopped: {failure!r}", file=sys.stderr)
        return 1
    return 0
