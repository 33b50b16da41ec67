"""`meshwarden check PATH...`: validate policy files, reporting every problem at once."""

from __future__ import annotations

import argparse
import sys

from meshwarden.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    InputError,
    add_output_format,
    add_policy_paths,
    fail,
    load_or_raise,
    print_json,
)
from meshwarden.cli._excerpt import SourceLines

HELP = """\
Validate policy files and directories (searched recursively for *.yaml / *.yml) and report
every problem at once, one per line as FILE:LINE:COL: error: MESSAGE (or warning:).

Errors: YAML syntax, unknown fields, wrong types and enum values, bad names, SPIFFE IDs, trust
domains, CIDRs and ports, duplicate (kind, namespace, name), unknown condition keys, HTTP-only
fields on tcp ports, JWT constraints without a JwtIssuer. Warnings: selectors matching no
workload, rules that can never match, rules fully shadowed by another rule.

In text output each problem is followed by the line it is on, with a caret under the column.

examples:
  meshwarden check examples/shop
  meshwarden check policies/ extra.yaml --strict
  meshwarden check policies/ -o json | jq '.diagnostics[] | select(.severity == "error")'

exit status: 0 valid (warnings allowed), 1 invalid, 2 usage error (e.g. a path that does not
exist)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("check", help="validate policy files", description=HELP)
    add_policy_paths(parser)
    add_output_format(parser, "text for people or one JSON object for scripts")
    parser.add_argument("--no-warnings", action="store_true", help="print errors only")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshwarden.engine import collection_paused  # not at import (fast --help)

    with collection_paused():  # what the command loads lives until it ends: no collector walks
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        result = load_or_raise(args.paths)
    except InputError as exc:
        return fail(str(exc))
    shown = result.errors if args.no_warnings else result.diagnostics
    failed = bool(result.errors) or (args.strict and bool(result.warnings))
    if args.output == "json":
        print_json(
            {
                "valid": not failed,
                "files": result.files,
                "documents": len(result.documents),
                "errors": len(result.errors),
                "warnings": len(result.warnings),
                "diagnostics": [d.to_json() for d in shown],
            }
        )
    else:
        sources = SourceLines()
        for diagnostic in shown:
            print(diagnostic)
            where = diagnostic.location
            for line in sources.excerpt(where.file, where.line, where.column):
                print(line)
        summary = (
            f"{len(result.files)} file(s), {len(result.documents)} valid document(s): "
            f"{len(result.errors)} error(s), {len(result.warnings)} warning(s)"
        )
        print(summary, file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK
