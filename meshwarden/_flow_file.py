"""The flow log on disk (`--flow-log-file PATH`): one JSON object per line, as `GET /flows`
prints records, so `meshwarden recommend --flows PATH` and `lint --flows` read it back.

Rotated by size: when PATH would grow past `max_bytes` it becomes PATH.1 (PATH.1 becomes
PATH.2, ... the oldest beyond `keep` is removed). Files are created 0600 and opened without
following symlinks (a planted link makes the write fail, it never redirects it). A write error
is reported once on stderr and counted; the in-memory flow log and the mesh carry on.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from meshwarden.xds import Flow

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 4
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def open_private(path: Path) -> int:
    """A descriptor to append to `path`: created 0600, never through a symlink; an existing
    file readable by others is refused (it may hold who talked to whom)."""
    fd = os.open(path, _FLAGS, 0o600)
    mode = os.fstat(fd).st_mode
    if mode & 0o077:
        os.close(fd)
        raise PermissionError(
            f"{path} is readable by others (mode {mode & 0o777:o}); "
            "chmod 600 it or choose another file"
        )
    return fd


def problem(path: Path | None) -> str:
    """Why `--flow-log-file PATH` cannot be used ("" when it can, or when not given)."""
    if path is None:
        return ""
    try:
        os.close(open_private(path))
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or exc
        return f"--flow-log-file {path}: {reason}"
    return ""


class FlowFile:
    """Appends flow records to PATH, rotating by size. Not thread-safe (the event loop's)."""

    def __init__(
        self,
        path: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        errors: TextIO = sys.stderr,
    ) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError("a flow log file needs max_bytes >= 1 and keep >= 1")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.written = 0
        self.failures = 0
        self._errors = errors
        self._fd = open_private(path)
        self._size = os.fstat(self._fd).st_size

    def add(self, flows: Sequence[Flow]) -> None:
        data = "".join(json.dumps(f.to_json(), separators=(",", ":")) + "\n" for f in flows)
        encoded = data.encode()
        try:
            if self._fd < 0:
                self._fd, self._size = open_private(self.path), 0
            if self._size and self._size + len(encoded) > self.max_bytes:
                self._rotate()
            os.write(self._fd, encoded)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                print(
                    f"meshwarden: flow log file {self.path}: {exc} (records are kept in "
                    "memory only until it works again)",
                    file=self._errors,
                )
            return
        self._size += len(encoded)
        self.written += len(flows)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        for n in range(self.keep, 0, -1):
            older = self._numbered(n)
            if n == self.keep:
                older.unlink(missing_ok=True)
            else:
                self._rename(older, self._numbered(n + 1))
        self._rename(self.path, self._numbered(1))
        self._fd, self._size = open_private(self.path), 0

    def _numbered(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    @staticmethod
    def _rename(source: Path, target: Path) -> None:
        if source.exists() or source.is_symlink():
            os.replace(source, target)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
