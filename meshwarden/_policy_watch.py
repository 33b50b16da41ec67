"""Which policy files are being written right now, from the kernel (Linux inotify).

A writer that has modified a file and not closed it yet leaves that file *open for writing*;
`close()` (IN_CLOSE_WRITE) or a rename into place (IN_MOVED_TO) ends the write. When no policy
file is open for writing, a change the directory's stat shows is complete and can be read at
once, without waiting for it to stay still (`_policy_files.SettledDirectory`).

The watch is trusted only for what it can see: it is *blind* (and the caller falls back to
waiting) for `settle` seconds after it was opened or a subdirectory appeared (writes that
began before the watch existed), after the kernel's event queue overflowed, when a watch
could not be added (limit reached) or the directory itself went away. Writes it cannot see at
all (another host on a network file system, a symlinked file's target elsewhere, mmap) change
the stat without an event; the caller notices that (`events` did not move) and waits.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
import weakref
from collections.abc import Callable
from pathlib import Path

__all__ = ["WriteWatch", "written_or_timeout"]

_MODIFY, _CLOSE_WRITE, _MOVED_FROM, _MOVED_TO = 0x2, 0x8, 0x40, 0x80
_CREATE, _DELETE, _DELETE_SELF, _MOVE_SELF = 0x100, 0x200, 0x400, 0x800
_OVERFLOW, _IGNORED, _ISDIR = 0x4000, 0x8000, 0x40000000
_ONLYDIR, _DONT_FOLLOW = 0x01000000, 0x02000000
_MASK = _MODIFY | _CLOSE_WRITE | _MOVED_FROM | _MOVED_TO | _CREATE | _DELETE
_MASK |= _DELETE_SELF | _MOVE_SELF | _ONLYDIR | _DONT_FOLLOW
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of name
_libc: ctypes.CDLL | None = None


def _inotify() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            _libc.inotify_init1  # noqa: B018 (not Linux: AttributeError)
        except (OSError, AttributeError):
            return None
    return _libc


class WriteWatch:
    """The policy files open for writing under a directory. Not thread-safe: one poller."""

    def __init__(
        self,
        fd: int,
        directory: Path,
        suffixes: tuple[str, ...],
        settle: float,
        clock: Callable[[], float],
    ) -> None:
        self._fd, self._settle, self._clock = fd, settle, clock
        # the descriptor is closed with the watch even when its owner never calls close():
        # inotify instances are a per-user resource (128 by default)
        self._release = weakref.finalize(self, os.close, fd)
        self._suffixes = suffixes
        self._dirs: dict[int, Path] = {}
        self._root = -1
        self._writing: set[tuple[int, str]] = set()  # (wd, name) modified and not closed
        self._moving: dict[int, bool] = {}  # rename cookie → the source was being written
        self._blind_until = clock() + settle
        self.broken = False
        self.events = 0  # events seen so far (a change with no event was not seen)
        self.last_event = float("-inf")  # clock() when events were last read
        self._watch_tree(directory)

    @classmethod
    def open(
        cls, directory: Path, suffixes: tuple[str, ...], settle: float, clock: Callable[[], float]
    ) -> WriteWatch | None:
        """A watch of the files named `*SUFFIX` (not hidden) under `directory`; None where
        inotify is not available (not Linux, no descriptors left)."""
        libc = _inotify()
        if libc is None:
            return None
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        return None if fd < 0 else cls(fd, directory, suffixes, settle, clock)

    def _watch_tree(self, directory: Path) -> None:
        self._watch(directory)
        try:
            subdirectories = [p for p in directory.rglob("*") if p.is_dir()]
        except OSError:
            subdirectories = []
        for path in subdirectories:
            if not any(part.startswith(".") for part in path.relative_to(directory).parts):
                self._watch(path)

    def _watch(self, directory: Path) -> None:
        assert _libc is not None
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd < 0:
            if not self._dirs:  # the directory itself: nothing to watch
                self.broken = True
            else:  # a subdirectory vanished, or the watch limit: do not trust the tree
                self._blind_until = float("inf")
            return
        self._dirs[wd] = directory
        if self._root < 0:
            self._root = wd

    def _is_policy_name(self, name: str) -> bool:
        return name.endswith(self._suffixes) and not name.startswith(".")

    def quiet(self) -> bool:
        """Every change seen so far is complete: no policy file is open for writing, and the
        watch could see every write (see the module's doc)."""
        self.drain()
        if self.broken or self._clock() < self._blind_until:
            return False
        return not any(self._is_policy_name(name) for _, name in self._writing)

    def drain(self) -> None:
        """Read the events the kernel queued (never blocks)."""
        while not self.broken:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, cookie, size = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset : offset + size].rstrip(b"\0").decode(errors="replace")
                offset += size
                self.events += 1
                self._event(wd, mask, cookie, name)
            self.last_event = self._clock()

    def _event(self, wd: int, mask: int, cookie: int, name: str) -> None:
        if mask & _OVERFLOW:  # events were lost: nothing is known until the tree is still
            self._writing.clear()
            self._blind_until = self._clock() + self._settle
        elif mask & (_DELETE_SELF | _MOVE_SELF | _IGNORED):
            if wd == self._root:  # the policy directory itself
                self.broken = True
            self._dirs.pop(wd, None)
        elif mask & _ISDIR:
            if mask & (_CREATE | _MOVED_TO) and not name.startswith("."):
                self._watch_tree(self._dirs[wd] / name)  # may hold files written unseen
                self._blind_until = self._clock() + self._settle
        else:
            self._file_event(wd, mask, cookie, name)

    def _file_event(self, wd: int, mask: int, cookie: int, name: str) -> None:
        key = (wd, name)  # every name, not only policy files: a temporary file is renamed
        if mask & (_CREATE | _MODIFY):
            self._writing.add(key)
        if mask & (_CLOSE_WRITE | _DELETE):
            self._writing.discard(key)
        if mask & _MOVED_FROM:
            if len(self._moving) > 1000:  # renamed out of the tree: no MOVED_TO will come
                self._moving.clear()
            self._moving[cookie] = key in self._writing
            self._writing.discard(key)
        if mask & _MOVED_TO and self._moving.pop(cookie, False):
            self._writing.add(key)  # renamed into place while still being written

    def fileno(self) -> int:
        """The inotify descriptor: readable when events are queued (a poller may wait on it)."""
        return self._fd

    def writing(self) -> list[str]:
        """Policy files open for writing (for messages and tests)."""
        return sorted(
            str(self._dirs[wd] / name)
            for wd, name in self._writing
            if wd in self._dirs and self._is_policy_name(name)
        )

    def close(self) -> None:
        self._release()
        self.broken = True


async def written_or_timeout(fd: int | None, timeout: float) -> None:
    """Sleep `timeout` seconds, or less when `fd` (the policy directory's inotify watch)
    turns readable: a write is seen when it happens, not at the next poll."""
    if fd is None:
        await asyncio.sleep(timeout)
        return
    loop = asyncio.get_running_loop()
    written: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not written.done():
            written.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(written, timeout)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
