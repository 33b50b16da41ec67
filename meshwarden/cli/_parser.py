"""The argument parser every command uses: one-line usage errors (exit 2) that name the flag
first, and help that keeps example blocks as written and shows each flag's default."""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import textwrap
from typing import Any, NoReturn

from meshwarden.cli._common import EXIT_USAGE

_ARGUMENT = re.compile(r"^argument ([^:]+): ")
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)$")


class HelpFormatter(argparse.HelpFormatter):
    """Paragraphs are re-wrapped to the terminal; indented lines (examples) are kept as written.
    A flag's help gains `(default: X)` unless it already speaks of its default."""

    def __init__(self, prog: str) -> None:
        width = min(shutil.get_terminal_size().columns, 100) - 2
        super().__init__(prog, max_help_position=34, width=max(width, 60))

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        prose: list[str] = []

        def flush() -> None:
            if prose:
                out.append(
                    textwrap.fill(
                        " ".join(prose), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
                prose.clear()

        for line in textwrap.dedent(text).strip("\n").splitlines():
            if line.strip() and not line[0].isspace():
                prose.append(line.strip())
                continue
            flush()
            out.append(indent + line if line.strip() else "")
        flush()
        return "\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = (
            action.option_strings
            and default not in (None, False, True, argparse.SUPPRESS, [])
            and "default" not in text.lower()
        )
        return f"{text} (default: %(default)s)" if shown else action.help


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with the project's help format and one-line errors. Sub-command
    parsers are made by the same class (argparse passes the class on)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USAGE, f"{self.prog}: error: {usage_message(message)} (see '{self.prog} --help')\n"
        )


def usage_message(message: str) -> str:
    """argparse's message with the flag first (`--since 'soon': expected a duration ...`) and a
    "did you mean" for a mistyped sub-command or choice; always one line."""
    message = _ARGUMENT.sub(
        lambda m: m[1] + ("" if message[m.end() :].startswith("'") else ":") + " ", message
    )
    choice = _INVALID_CHOICE.search(message)
    if choice:
        choices = re.findall(r"'([^']*)'", choice[2])
        close = difflib.get_close_matches(choice[1], choices, n=1)
        if close:
            message += f"; did you mean '{close[0]}'?"
    return " ".join(message.split())
