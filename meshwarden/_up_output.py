"""Noticing that a long-running command's output went away: `meshwarden up … | head` once
`head` exited. Writing there fails (BrokenPipeError: Python ignores SIGPIPE), but `up` may have
nothing more to write for hours, so the pipe is watched: the write end of a pipe whose last
reader closed polls as an error (POLLERR), which the event loop reports to a reader callback."""

from __future__ import annotations

import asyncio
import os
import select
import stat
from collections.abc import Callable

OUTPUTS = (1, 2)  # stdout, stderr


def is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def reader_gone(fd: int) -> bool:
    """Whether `fd` is a pipe nobody reads any more (what writing to it would say: EPIPE)."""
    if not is_pipe(fd):
        return False
    poll = select.poll()
    poll.register(fd, 0)  # errors and hang-ups are always reported
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))


def discard_closed_outputs() -> None:
    """Point stdout and stderr, where their reader is gone, at /dev/null: what is still
    buffered (and the interpreter's last flush) then goes nowhere quietly."""
    for fd in OUTPUTS:
        if reader_gone(fd):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)


def watch_outputs(on_closed: Callable[[], None]) -> Callable[[], None]:
    """Call `on_closed` (on the running loop) once the reader of stdout or stderr, where
    either is a pipe, went away; returns what stops watching. A terminal or a file is not
    watched (nothing can close it under us)."""
    loop = asyncio.get_running_loop()
    watched = [fd for fd in OUTPUTS if is_pipe(fd)]

    def woken(fd: int) -> None:
        loop.remove_reader(fd)  # once: a wake-up that is no error would repeat forever
        watched.remove(fd)
        if reader_gone(fd):
            on_closed()

    for fd in watched:
        loop.add_reader(fd, woken, fd)

    def unwatch() -> None:
        for fd in watched:
            loop.remove_reader(fd)
        watched.clear()

    return unwatch
