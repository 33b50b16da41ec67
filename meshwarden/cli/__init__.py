"""The `meshwarden` command line. Each sub-command lives in its own module with a `register`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module named here defines `register(subparsers)`; it adds its parser and sets `func`,
# a callable taking the parsed namespace and returning the exit code.
_COMMAND_MODULES: tuple[str, ...] = (
    "check",
    "explain",
    "demo",
    "server",
    "token",
    "ca",
    "agent",
    "svid",
    "up",
    "bootstrap",
    "flows",
)


# Commands registered by a module of another name.
_MODULE_OF = {name: name for name in _COMMAND_MODULES} | {"sidecar": "bootstrap"}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshwarden",
        description=(
            "Identity-first authorization for service meshes: validate policies, explain "
            "decisions, issue SPIFFE identities and drive Envoy sidecars."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES if only is None else (only,):
        module = importlib.import_module(f"meshwarden.cli._{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the command being run: some pull in gRPC and Envoy types, slow to import.
    only = _MODULE_OF.get(argv[0]) if argv else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
