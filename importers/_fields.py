"""Typed reading of an object's fields: a value of the wrong type or a field the translator does
not know is an `error:` at its position, never silently dropped."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshwarden.engine import Diagnostic
from meshwarden.importers._objects import KubeObject, error


class Fields:
    """The fields of one object, read through type checks that record problems."""

    def __init__(self, obj: KubeObject, problems: list[Diagnostic]) -> None:
        self.obj = obj
        self.problems = problems

    def fail(self, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(error(self.obj.at(*path), message))

    def _typed(self, path: tuple[str | int, ...], kind: type | tuple[type, ...], what: str) -> Any:
        value = self.obj.get(*path)
        if value is None:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.fail(path, f"{_name(path)} must be {what}, got {type(value).__name__}")
            return None
        return value

    def mapping(self, *path: str | int) -> dict[str, Any] | None:
        return self._typed(path, dict, "a mapping")  # type: ignore[no-any-return]

    def sequence(self, *path: str | int) -> list[Any] | None:
        return self._typed(path, list, "a list")  # type: ignore[no-any-return]

    def string(self, *path: str | int) -> str | None:
        return self._typed(path, str, "a string")  # type: ignore[no-any-return]

    def integer(self, *path: str | int) -> int | None:
        return self._typed(path, int, "an integer")  # type: ignore[no-any-return]

    def port(self, *path: str | int) -> int | str | None:
        """A port number (1-65535) or a port name (IANA_SVC_NAME)."""
        value = self._typed(path, (int, str), "a port number or name")
        if isinstance(value, int) and not 1 <= value <= 65535:
            self.fail(path, f"{_name(path)} {value} is not a port number (1-65535)")
            return None
        return value  # type: ignore[no-any-return]

    def known(self, path: tuple[str | int, ...], allowed: Iterable[str]) -> None:
        """Every key of the mapping at `path` is one of `allowed`; others are errors."""
        value = self.obj.get(*path)
        if not isinstance(value, dict):
            return
        names = set(allowed)
        for key in value:
            if key not in names:
                where = self.obj.key_at(*path, key)
                choices = ", ".join(sorted(names))
                self.problems.append(
                    error(where, f"{_name((*path, key))} is not supported here (known: {choices})")
                )


def _name(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "object"
