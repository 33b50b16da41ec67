"""The guard around every command: errors become one line and an exit code, never a traceback
(a closed pipe, Ctrl-C, an OS error, a bug); third-party warning noise is silenced narrowly."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from meshwarden.cli._common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
)

DEBUG_ENV = "MESHWARDEN_DEBUG"


def quiet_third_party_warnings() -> None:
    """py-spiffe names `dsa.DSAPublicKey` in a type at import time, and cryptography warns that
    DSA is deprecated; meshwarden never uses DSA keys. Only that warning, only from py-spiffe."""
    warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"spiffe(\.|$)")


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a parsed command; every way it can end is an exit code and at most one line."""
    try:
        code = func(args)
        sys.stdout.flush()
    except CommandError as exc:
        report(args, str(exc), exc.details)
        return exc.exit_code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:  # a port in use, a file that cannot be read, an Envoy that will not run
        if os.environ.get(DEBUG_ENV):
            raise
        report(args, _os_error(exc))
        return EXIT_USAGE
    except Exception as exc:  # a bug: still one line, and never exit 1 (which means "denied")
        if os.environ.get(DEBUG_ENV):
            raise
        report(
            args,
            f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)",
        )
        return EXIT_USAGE
    return code


def report(args: argparse.Namespace, message: str, details: dict[str, Any] | None = None) -> None:
    """`meshwarden COMMAND: error: MESSAGE` on stderr, or `{"error": ...}` on stdout under
    `-o json` (where a script reads the result)."""
    message = " ".join(message.split())
    try:
        if getattr(args, "output", None) == "json":
            json.dump({"error": message, **(details or {})}, sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
        else:
            prog = getattr(args, "command_prog", None) or "meshwarden"
            print(f"{prog}: error: {message}", file=sys.stderr)
    except BrokenPipeError:
        _discard_stdout()


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _discard_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
