"""Reading a policy directory atomically: a change is read only once it has settled.

Editors and `cp` write files in pieces; a half-written file must never be compiled. A change
(some file's size or mtime differs, or a file appeared or went) is read once its stat has not
moved for `settle` seconds; the bytes read are hashed, and they are used only when a second read
after another `settle` seconds finds the same stat and the same hashes. What is compiled is
exactly the bytes that were hashed (never re-read from disk).

A file or directory vanishing in the middle of a scan is a change like any other, never an
exception: the scan is retried on the next poll.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshwarden._policy_watch import WriteWatch
from meshwarden.engine import FileChanged, Refused, UsageError, open_policy_file, scan_files

SETTLE_SECONDS = 0.2  # a change must be still for this long (twice: stat, then content)
WRITE_QUIET_SECONDS = 0.025  # with the watch: no write for this long (one burst of files)...
WRITE_QUIET_MAX_SECONDS = 0.1  # ...longer on a busy machine, up to this (`write_quiet_seconds`)
READ_LIMIT = 64 * 1024 * 1024  # bytes read of one file at most (the engine's own limit is lower)
YAML_SUFFIXES = (".yaml", ".yml")

Fingerprint = tuple[tuple[str, int, int], ...]
"""(path, mtime_ns, size) of every policy file, sorted."""
UNUSABLE = -1  # the mtime of a path the scan found but cannot use (reading names the reason)


class ScanError(Exception):
    """The directory itself cannot be listed (gone, not a directory, no permission)."""


@dataclass(frozen=True, slots=True)
class PolicyFile:
    path: str
    content: bytes
    digest: str  # sha256 of `content`
    error: str | None = None  # why it could not be read (then `content` is empty)


@dataclass(frozen=True, slots=True)
class DirectoryContents:
    """A settled read of the directory: every policy file and its bytes."""

    fingerprint: Fingerprint
    files: tuple[PolicyFile, ...]

    def by_path(self) -> dict[str, bytes]:
        return {file.path: file.content for file in self.files}


def fingerprint(directory: Path) -> Fingerprint:
    """(path, mtime, size) of every policy file `meshwarden check` would read in the directory
    (the same walk), and (path, UNUSABLE, 0) of each one that cannot be used — a directory it
    cannot list, a dangling link, a link loop — so that reading reports it instead of leaving
    it out. A file removed while the directory is listed is left out; ScanError when the
    directory is gone."""
    if not directory.is_dir():
        raise ScanError(f"{directory}: no such directory (or not a directory)")
    try:
        files, problems = scan_files([directory])
    except UsageError:  # no policy file at all: an empty set (the Mesh guard judges it)
        return ()
    except OSError as exc:
        raise ScanError(f"{directory}: cannot list: {exc.strerror or exc}") from None
    found = [(str(p.location.file), UNUSABLE, 0) for p in problems]
    for path in files:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            if os.path.islink(path):  # dangling: reading names it
                found.append((path, UNUSABLE, 0))
            continue  # removed mid-scan: the next poll sees the directory again
        except OSError:
            found.append((path, UNUSABLE, 0))  # a link loop, a parent no longer searchable
            continue
        found.append((path, info.st_mtime_ns, info.st_size))
    return tuple(sorted(found))


def read_contents(files: Fingerprint) -> tuple[PolicyFile, ...] | None:
    """The bytes of every file, or None when one went away (the scan starts over). A file
    that cannot be read (or is not a regular file) is kept with its `error`."""
    out = []
    for path, _, _ in files:
        read = _read(path)
        if read is None:
            return None
        out.append(read)
    return tuple(out)


def _read(path: str) -> PolicyFile | None:
    if os.path.isdir(path) and not os.path.islink(path):  # listed as a problem by the scan
        try:
            os.listdir(path)
        except OSError as exc:
            return PolicyFile(path, b"", "", f"cannot read directory: {exc.strerror or exc}")
        return None  # listable again: scan anew
    try:
        fd, _ = open_policy_file(path)
    except FileChanged:
        return None  # swapped while it was opened: scan anew
    except FileNotFoundError as exc:
        if not os.path.islink(path):
            return None
        return PolicyFile(path, b"", "", f"cannot read file: {exc.strerror}")
    except OSError as exc:
        return PolicyFile(path, b"", "", f"cannot read file: {exc.strerror or exc}")
    except Refused as exc:
        return PolicyFile(path, b"", "", f"cannot read file: {exc}")
    with os.fdopen(fd, "rb") as handle:
        try:
            content = handle.read(READ_LIMIT + 1)
        except OSError as exc:
            return PolicyFile(path, b"", "", f"cannot read file: {exc.strerror or exc}")
    if len(content) > READ_LIMIT:
        digest = hashlib.sha256(content).hexdigest()  # a change of the first bytes is seen
        return PolicyFile(path, b"", digest, f"file is larger than {READ_LIMIT:,} bytes; not read")
    return PolicyFile(path, content, hashlib.sha256(content).hexdigest())


def quiet_window(load: float, cores: int) -> float:
    """How long no write must be seen before a burst of files is taken as complete. A writer
    between two files (a script, `git checkout`) is off the CPU while other runnable tasks
    have it, so the window grows with the run queue per core: WRITE_QUIET_SECONDS on a machine
    with a core to spare, up to WRITE_QUIET_MAX_SECONDS at four runnable tasks per core."""
    per_core = load / max(1, cores)
    return min(WRITE_QUIET_MAX_SECONDS, WRITE_QUIET_SECONDS * max(1.0, per_core))


def write_quiet_seconds() -> float:
    """`quiet_window` of this machine now (the 1-minute load average)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available: assume busy
        return WRITE_QUIET_MAX_SECONDS
    return quiet_window(load, os.cpu_count() or 1)


@dataclass(slots=True)
class _Pending:
    fingerprint: Fingerprint
    since: float
    files: tuple[PolicyFile, ...] | None = None


class SettledDirectory:
    """Polled by the control plane: `poll()` returns the directory's contents once after each
    change, when the change has settled; None while nothing changed or a change is settling.

    With `watch_writes` (Linux), a change is read at once when the kernel says no policy file
    is open for writing (`_policy_watch`), confirmed by no write and no stat change during the
    read; otherwise (or when the watch cannot see everything) it waits as described above."""

    def __init__(
        self,
        directory: Path,
        settle: float = SETTLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        watch_writes: bool = False,
        quiet: Callable[[], float] = write_quiet_seconds,
    ) -> None:
        self.directory = directory
        self.settle = settle
        self._clock = clock
        self._quiet = quiet
        self._delivered: Fingerprint | None = None
        self._pending: _Pending | None = None
        self._watch_writes = watch_writes and settle > 0
        self._watch: WriteWatch | None = None
        self._events_delivered = -1  # the watch's event count at the last delivery

    @property
    def settling(self) -> bool:
        """A change was seen and is not delivered yet."""
        return self._pending is not None

    @property
    def wake_fd(self) -> int | None:
        """A descriptor that becomes readable when the directory is written (the inotify
        watch), for a poller to wait on between polls; None without a watch."""
        watch = self._writes()
        return None if watch is None else watch.fileno()

    def poll(self) -> DirectoryContents | None:
        """Raises ScanError when the directory cannot be listed."""
        if self._watch is not None:
            self._watch.drain()  # also events of no consequence: `wake_fd` is read empty
        current = fingerprint(self.directory)
        now = self._clock()
        pending = self._pending
        if pending is None or pending.fingerprint != current:
            if current == self._delivered:
                self._pending = None  # changed and changed back
                return None
            self._pending = pending = _Pending(current, now)
            if self._seen_complete():
                return self._read_at_once(current)
            if self.settle > 0:
                return None
        elif self._seen_complete():  # the writer closed the file since
            return self._read_at_once(current)
        if now - pending.since < self.settle:
            return None
        files = read_contents(current)
        if files is None:
            self._pending = None
            return None
        if self.settle > 0 and (pending.files is None or pending.files != files):
            pending.files, pending.since = files, now  # once more, after another interval
            return None
        return self._deliver(current, files)

    def _seen_complete(self) -> bool:
        """The watch saw this change being written, no policy file is open for writing, and
        nothing was written for the quiet window (files written in one burst — a script,
        `git checkout`, `cp -r` — are read together)."""
        return self.ready_in == 0

    @property
    def ready_in(self) -> float | None:
        """Seconds until the change seen can be read at once (0: now); None when it must settle
        (or nothing changed): the control plane polls again that soon."""
        watch = self._writes()
        if self._pending is None or watch is None or not watch.quiet():
            return None
        if watch.events == self._events_delivered:
            return None
        return max(0.0, watch.last_event + self._quiet() - self._clock())

    def _read_at_once(self, current: Fingerprint) -> DirectoryContents | None:
        watch = self._watch
        assert watch is not None
        events = watch.events
        files = read_contents(current)
        if files is None or not watch.quiet() or watch.events != events:
            return None  # written meanwhile: the next poll sees it (or the timed settle does)
        if fingerprint(self.directory) != current:
            return None
        return self._deliver(current, files)

    def _deliver(self, current: Fingerprint, files: tuple[PolicyFile, ...]) -> DirectoryContents:
        self._pending, self._delivered = None, current
        if self._watch is not None:
            self._watch.drain()
            self._events_delivered = self._watch.events
        return DirectoryContents(current, files)

    def _writes(self) -> WriteWatch | None:
        if not self._watch_writes:
            return None
        if self._watch is not None and self._watch.broken:
            self._watch.close()
            self._watch = None
        if self._watch is None:
            self._watch = WriteWatch.open(self.directory, YAML_SUFFIXES, self.settle, self._clock)
        return self._watch

    def close(self) -> None:
        """Give the write watch back (an inotify instance: a per-user resource, 128 by
        default); later polls settle on time alone."""
        self._watch_writes = False
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def forget(self) -> None:
        """Deliver the directory again on the next settled poll (even if unchanged)."""
        self._delivered = None
