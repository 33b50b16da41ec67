"""The `meshwarden` command line. Each sub-command lives in its own module with a `register`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from meshwarden.cli._entry import quiet_third_party_warnings, run_command
from meshwarden.cli._parser import Parser

__all__ = ["build_parser", "main", "subcommand_parsers"]

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
    "completion",
    "render",
    "test",
    "lint",
    "recommend",
    "promote",
    "verify",
    "import",
    "matrix",
    "store",
    "status",
)


# Commands registered by a module of another name.
_MODULE_OF = (
    {name: name for name in _COMMAND_MODULES}
    | {"sidecar": "bootstrap"}
    | {name: "store" for name in ("apply", "history", "diff", "rollback", "store")}
)

# What `meshwarden --help` lists, without importing the command modules (several pull in gRPC and
# Envoy types and take a second to import). The text must equal each parser's own `help=`; a test
# compares this listing with the full tree's. A command missing here is imported as before.
_SUMMARIES: dict[str, str] = {
    "check": "validate policy files",
    "explain": "decide and explain one request",
    "demo": "run the shop example as a live mesh (or --offline: check and explain)",
    "server": "run the control plane (CA, node API, ADS)",
    "token": "join tokens for agents",
    "ca": "the certificate authority",
    "agent": "run the node agent (Workload API)",
    "svid": "inspect SVIDs from the Workload API",
    "up": "run server, agent and one Envoy per workload on this host",
    "bootstrap": "print a sidecar's Envoy bootstrap",
    "sidecar": "run Envoy as a workload's sidecar",
    "flows": "show the authorization decisions the sidecars reported",
    "completion": "print a shell completion script",
    "render": "render a node's nftables/iptables filter or cloud firewall rules",
    "test": "run policy test cases (for CI)",
    "lint": "find risky or broken-in-waiting policies (stable codes)",
    "recommend": "write dry-run ALLOW policies from observed flows",
    "promote": "switch dry-run policies to enforce, if the flows show no would-deny",
    "verify": "probe the live mesh through its sidecars and compare with explain",
    "import": "translate Kubernetes objects, NetworkPolicies and Istio policies",
    "matrix": "print who can reach whom (a reachability matrix)",
    "status": "show every sidecar's configuration state: SYNCED, STALE, NACK or PROBLEM",
    "store": "operations on the shared store itself (rekey)",
}
_LISTING = "listing"  # `build_parser(_LISTING)`: summaries only, for the top-level help

_EPILOG = """\
examples:
  meshwarden check examples/shop
  meshwarden explain examples/shop --to shop/backend-1 --port 8080 --from-workload shop/frontend-1
  meshwarden demo --offline
  meshwarden COMMAND --help

exit status: 0 ok (allowed, valid), 1 the answer is no (denied, invalid) or the command failed,
2 usage, input or internal error; see docs/cli.md."""


class _Version(argparse.Action):
    """`--version`: looked up only when asked (reading package metadata slows every start)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print meshwarden's version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("meshwarden")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            shown = "unknown"
        print(f"meshwarden {shown}")
        parser.exit()


def build_parser(only: Sequence[str] | str | None = None) -> argparse.ArgumentParser:
    """The whole command tree, only the commands of the modules in `only`, or (`"listing"`) each
    command's name and summary, enough for `meshwarden --help` and a mistyped command."""
    parser = Parser(
        prog="meshwarden",
        description=(
            "Identity-first authorization for service meshes: validate policies, explain "
            "decisions, issue SPIFFE identities and drive Envoy sidecars."
        ),
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action=_Version)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if only == _LISTING:
        _register_summaries(subparsers)
    else:
        for name in _COMMAND_MODULES if only is None else only:
            module = importlib.import_module(f"meshwarden.cli._{name}")
            module.register(subparsers)
    for sub in subcommand_parsers(parser):
        sub.set_defaults(command_prog=sub.prog)  # errors are `meshwarden token create: error:`
    return parser


def _register_summaries(subparsers: Any) -> None:
    for name in _COMMAND_MODULES:
        commands = [c for c, module in _MODULE_OF.items() if module == name]
        if all(c in _SUMMARIES for c in commands):
            for command in commands:
                subparsers.add_parser(command, help=_SUMMARIES[command])
        else:
            importlib.import_module(f"meshwarden.cli._{name}").register(subparsers)


def subcommand_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every sub-command parser under `parser`, depth first (`token`, then `token create`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield sub
                yield from subcommand_parsers(sub)


def _modules_for(argv: list[str]) -> tuple[str, ...] | str:
    """Import only the command being run: some pull in gRPC and Envoy types, slow to import."""
    if argv and argv[0] == "--version":
        return ()
    module = _MODULE_OF.get(argv[0]) if argv else None
    return _LISTING if module is None else (module,)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_third_party_warnings()
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_modules_for(args_list))
    args, extra = parser.parse_known_args(args_list)
    if extra:  # reported by the command's own parser: `meshwarden demo: error: ...`
        prog = getattr(args, "command_prog", parser.prog)
        owner = next((p for p in subcommand_parsers(parser) if p.prog == prog), parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return run_command(func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
