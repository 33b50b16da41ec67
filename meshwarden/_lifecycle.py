"""How a long-running command (`server`, `agent`, `up`) starts, prints `ready`, runs and stops:
exit status 2 for what the user must fix before starting again, 1 for a failure, 0 when
SIGINT or SIGTERM stopped it, 141 when its output went away (`… | head` exited): it stops
everything it started first, whenever that happens — writing there failed (BrokenPipeError), or,
with `stop_when_output_closes`, the pipe's reader closed while it had nothing to write."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TextIO

from meshwarden._up_output import discard_closed_outputs, watch_outputs
from meshwarden.identities import StateError

EXIT_OUTPUT_CLOSED = 141  # as for a process killed by SIGPIPE (the CLI's EXIT_BROKEN_PIPE)


class _Ending:
    """What stops the command: SIGINT/SIGTERM, or its output going away."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.output_closed = False

    def closed(self) -> None:
        self.output_closed = True
        self.event.set()

    def say(self, text: str, stream: TextIO) -> None:
        """Print a line; a closed pipe there ends the command instead of failing it."""
        try:
            print(text, file=stream, flush=True)
        except BrokenPipeError:
            self.closed()

    def code(self, code: int) -> int:
        """The exit status: 141 for a stop because the output went away; a failure keeps
        its own."""
        if not self.output_closed:
            return code
        discard_closed_outputs()  # what is still buffered goes nowhere, quietly
        return code or EXIT_OUTPUT_CLOSED


async def serve_until_signalled(
    start: Callable[[], Awaitable[str]],
    run: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[], Awaitable[None]],
    command: str = "meshwarden",
    stop_when_output_closes: bool = False,
) -> int:
    """`start` returns the text of the `ready` line; `run` runs until cancelled. A StateError
    at start (a corrupt or missing state file, an unsafe data dir) exits 2, any other failure 1.
    SIGINT/SIGTERM stop it at any time, also while `start` still waits (exit 0); so does its
    output going away (exit 141; see the module docstring) with `stop_when_output_closes`, and
    then SIGHUP too (exit 0): its terminal closed, and what it started outlives it otherwise."""
    loop = asyncio.get_running_loop()
    ending = _Ending()
    hangup = (signal.SIGHUP,) if stop_when_output_closes else ()  # its terminal closed
    for signum in (signal.SIGINT, signal.SIGTERM, *hangup):
        loop.add_signal_handler(signum, ending.event.set)
    unwatch = watch_outputs(ending.closed) if stop_when_output_closes else lambda: None
    try:
        return ending.code(await _serve(start, run, stop, command, ending))
    finally:
        unwatch()


async def _serve(
    start: Callable[[], Awaitable[str]],
    run: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[], Awaitable[None]],
    command: str,
    ending: _Ending,
) -> int:
    starting: asyncio.Future[str] = asyncio.ensure_future(start())
    waiter: asyncio.Future[Any] = asyncio.ensure_future(ending.event.wait())
    await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # stopped while starting (e.g. `up` waiting for ACKs)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await stop()
        return 0
    waiter.cancel()
    try:
        ready = starting.result()
    except BrokenPipeError:  # its output went away while it started
        ending.closed()
        await stop()
        return 0
    except (StateError, OSError) as exc:  # fix a file, the data dir, a port in use first
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        ending.say(f"{command}: error: {reason}", sys.stderr)
        await stop()
        return 2
    except Exception as exc:  # the component failed to start: report, exit 1
        ending.say(f"{command}: error: {exc}", sys.stderr)
        await stop()
        return 1
    ending.say(f"ready {ready}", sys.stdout)
    return await _run(run, stop, command, ending)


async def _run(
    run: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[], Awaitable[None]],
    command: str,
    ending: _Ending,
) -> int:
    task = asyncio.create_task(run())
    waiter: asyncio.Future[Any] = asyncio.ensure_future(ending.event.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    failure = task.exception() if task.done() and not task.cancelled() else None
    task.cancel()
    waiter.cancel()
    await asyncio.gather(task, return_exceptions=True)  # its failure is `failure`
    await stop()
    if isinstance(failure, BrokenPipeError):  # it wrote to its output, which went away
        ending.closed()
    elif failure is not None:
        ending.say(f"{command}: error: stopped: {failure!r}", sys.stderr)
        return 1
    return 0
