"""`meshwarden lint PATH...`: slips `check` lets through, with stable codes and a fix each."""

from __future__ import annotations

import argparse
import sys

from meshwarden.cli import _flow_input
from meshwarden.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    InputError,
    add_output_format,
    fail,
    load_or_raise,
    print_json,
)
from meshwarden.cli._types import duration
from meshwarden.engine import (
    Finding,
    FlowWindow,
    LintOptions,
    LintSeverity,
    collection_paused,
    invalid_input,
    lint,
)

HELP = """\
Find policies that are valid but will not do what they say, or are risky: each finding has a
stable code, its place (FILE:LINE:COL), a one-line fix and a docs anchor (docs/lint.md#mw101).

  MW1xx errors in waiting  a rule split by a stray '- ', a namespace or service account no
                           workload has, a foreign trust domain, a JWT issuer no JwtIssuer
                           configures, an ALLOW rule a DENY rule denies first, two upstreams
                           on one localPort
  MW2xx risky              ALLOW rules open to plaintext peers or to any identity,
                           PERMISSIVE mTLS, a JwtIssuer without audiences
  MW3xx hygiene            selecting no workload, rules no flow hit (with --flows/--server),
                           dry-run for longer than --max-dry-run-age, redundant rules

Invalid policy files are reported as MW100 (run `meshwarden check` for details). A document
silences codes for itself with the annotation  meshwarden.io/lint-ignore: "MW203, MW301".

examples:
  meshwarden lint policies/
  meshwarden lint policies/ --fail-on warning -o json
  meshwarden lint policies/ --flows flows.ndjson --since 7d    # also: rules no flow hit

exit status: 0 no finding at or above --fail-on, 1 some finding is, 2 usage error."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "lint",
        help="find risky or broken-in-waiting policies (stable codes)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    _flow_input.add_arguments(p)
    add_output_format(p, help="text for people (default) or one JSON object for scripts")
    p.add_argument(
        "--fail-on",
        choices=("error", "warning", "info"),
        default="error",
        help="exit 1 when a finding is at least this severe (default: error)",
    )
    p.add_argument(
        "--max-dry-run-age",
        type=duration,
        default="14d",
        metavar="DURATION",
        help="MW303: dry-run for longer than this (default 14d)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with collection_paused():  # what the command loads lives until it ends: no collector walks
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        result = load_or_raise(args.paths)
        options = _options(args)
    except InputError as exc:
        return fail(str(exc))
    if result.compiled is None:
        findings = invalid_input(result.errors)
    else:
        findings = lint(result.compiled, options)
    threshold = LintSeverity(args.fail_on).rank
    failing = [f for f in findings if f.severity.rank >= threshold]
    _report(findings, args.output)
    return EXIT_FAILED if failing else EXIT_OK


def _options(args: argparse.Namespace) -> LintOptions:
    window = None
    if args.flows or args.server:
        window = FlowWindow.of(_flow_input.read_flows(args.flows, args.server, args.since))
    elif args.since is not None:
        raise InputError("--since needs --flows FILE or --server URL")
    return LintOptions(flows=window, dry_run_max_days=int(args.max_dry_run_age // 86400))


def _report(findings: list[Finding], output: str) -> None:
    if output == "json":
        print_json({"findings": [f.to_json() for f in findings]})
        return
    for finding in findings:
        print(finding)
    counts = {s: sum(1 for f in findings if f.severity is s) for s in LintSeverity}
    print(
        f"{len(findings)} finding(s): {counts[LintSeverity.ERROR]} error(s), "
        f"{counts[LintSeverity.WARNING]} warning(s), {counts[LintSeverity.INFO]} info "
        "(codes: docs/lint.md)",
        file=sys.stderr,
    )
