"""Helpers shared by the CLI commands: loading policies with errors printed, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from meshwarden.engine import LoadResult, UsageError, load

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class InputError(Exception):
    """Bad input on the command line; printed as `meshwarden: error: ...`, exit 2."""


def fail(message: str) -> int:
    print(f"meshwarden: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def percentage(text: str) -> float:
    """An argparse type: a number from 0 to 100."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a percentage, 0 to 100")
    return value


def load_or_raise(paths: list[str]) -> LoadResult:
    try:
        return load(paths)
    except UsageError as exc:
        raise InputError(str(exc)) from None


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
