"""`meshwarden recommend`: least-privilege ALLOW policies from the flows the mesh observed."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from meshwarden.cli import _flow_input
from meshwarden.cli._common import EXIT_FAILED, EXIT_OK, InputError, fail, load_or_raise
from meshwarden.engine import Recommendation, find_files, load, recommend

HELP = """\
Write least-privilege ALLOW policies from observed traffic: the flows the sidecars reported
(--flows FILE, as `server --flow-log-file` writes them, or --server URL, the in-memory flow
log), against the policies in PATH (who is who: workloads, labels, ports).

One policy per destination (workloads sharing one label set), one rule per group of callers
that did the same: exact identities, or a namespace when every identity of that namespace was
seen (said in a comment); each method with the paths it was used on; sibling paths collapse to
a prefix only when many share a directory (never to /*); plaintext callers (PERMISSIVE mTLS)
become /32 IP rules, flagged. Only allowed flows count — run the mesh in monitor mode
(Mesh spec.defaultMode: dry-run) to record everything.

Policies are written to DIR/NS/NAME.yaml as dry-run, each rule commented with the flows it
covers (count, first and last seen). Check them, deploy them, watch `meshwarden flows` for
would-deny, then `meshwarden promote`.

examples:
  meshwarden recommend policies/ --flows /var/lib/meshwarden/flows.ndjson --since 7d -o proposed/
  meshwarden recommend policies/ --server 127.0.0.1:9901 -o proposed/

exit status: 0 written, 1 no usable flow, 2 usage or input error."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "recommend",
        help="write dry-run ALLOW policies from observed flows",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    _flow_input.add_arguments(p, since_default="24h")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="DIR",
        help="directory to write the policies to (created if missing)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if not args.flows and not args.server:
            raise InputError("give --flows FILE (NDJSON) or --server URL to read flows from")
        result = load_or_raise(args.paths)
        if result.compiled is None:
            raise InputError(
                f"the policies have {len(result.errors)} error(s); "
                "run `meshwarden check` for details"
            )
        flows = _flow_input.read_flows(args.flows, args.server, args.since)
    except InputError as exc:
        return fail(str(exc))
    recommendations, notes = recommend(result.compiled, flows)
    for note in notes:
        print(f"meshwarden recommend: note: {note}", file=sys.stderr)
    if not recommendations:
        print(f"meshwarden recommend: no usable flow among {len(flows)} record(s)", file=sys.stderr)
        return EXIT_FAILED
    try:
        written = _write(recommendations, args.output, args.force)
    except InputError as exc:
        return fail(str(exc))
    for path, rec in written:
        print(f"{path}: {rec.ref}, {len(rec.rules)} rule(s) for {', '.join(rec.workloads)}")
    return _self_check(args.paths, [p for p, _ in written])


def _write(recs: list[Recommendation], out: Path, force: bool) -> list[tuple[Path, Recommendation]]:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    planned = [(out / rec.namespace / f"{rec.name}.yaml", rec) for rec in recs]
    existing = [str(p) for p, _ in planned if p.exists() or p.is_symlink()]
    if existing and not force:
        raise InputError(
            f"{existing[0]} exists (and {len(existing) - 1} more); "
            "use --force to overwrite or another -o DIR"
        )
    for path, rec in planned:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(rec.to_yaml(today))
    return planned


def _self_check(paths: list[str], written: list[Path]) -> int:
    """What was written must pass `check --strict` together with the input policies."""
    inputs = {Path(f).resolve() for f in find_files(paths)}
    result = load([*paths, *(str(p) for p in written if p.resolve() not in inputs)])
    own = {str(p) for p in written}
    problems = [d for d in result.diagnostics if d.location.file in own]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(
            "meshwarden recommend: the policies written above do not pass `check --strict`; "
            "please report this",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
