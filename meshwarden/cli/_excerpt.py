"""The source line a diagnostic points at, with a caret under its column (as compilers show)."""

from __future__ import annotations

import os
import stat

_MAX_FILE = 10 * 1024 * 1024  # larger files are refused by the loader anyway
_MAX_WIDTH = 160


class SourceLines:
    """Reads each file once; files that cannot be read show no excerpt."""

    def __init__(self) -> None:
        self._files: dict[str, list[str]] = {}

    def excerpt(self, file: str, line: int, column: int) -> list[str]:
        lines = self._lines(file)
        if not 1 <= line <= len(lines):
            return []
        source = lines[line - 1].rstrip("\r\n")
        if len(source) > _MAX_WIDTH:
            return []
        # Keep tabs under tabs so the caret lands under the column whatever the tab width.
        pad = "".join(c if c == "\t" else " " for c in source[: max(column - 1, 0)])
        gutter = f"{line:>5}"
        return [f"{gutter} | {source}", f"{' ' * len(gutter)} | {pad}^"]

    def _lines(self, file: str) -> list[str]:
        if file not in self._files:
            try:
                self._files[file] = _read(file).decode(errors="replace").splitlines()
            except OSError:
                self._files[file] = []
        return self._files[file]


def _read(file: str) -> bytes:
    """A regular file's bytes; never blocks on a FIFO or reads a device."""
    with open(os.open(file, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_FILE:
            raise OSError("not a regular file of a readable size")
        return handle.read(_MAX_FILE)
