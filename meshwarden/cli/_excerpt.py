"""The source line a diagnostic points at, with a caret under its column (as compilers show)."""

from __future__ import annotations

from meshwarden.engine import read_text

_MAX_WIDTH = 160


class SourceLines:
    """Reads each file once, by the loader's rules (a regular file, a link only to a file of its
    own owner, within the size limit, UTF-8); files that cannot be read show no excerpt."""

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
            text, _ = read_text(file)
            self._files[file] = text.splitlines() if text is not None else []
        return self._files[file]
