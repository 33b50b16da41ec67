"""`meshwarden promote NS/NAME... PATH`: dry-run → enforce, in place, once the flows say so."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshwarden.cli import _flow_input
from meshwarden.cli._common import EXIT_FAILED, EXIT_OK, InputError, fail, load_or_raise
from meshwarden.cli._types import duration, http_server
from meshwarden.engine import (
    CompiledMesh,
    CompiledPolicy,
    EgressPolicy,
    Location,
    load,
    would_deny,
)

HELP = """\
Switch dry-run AuthorizationPolicies to enforce by editing their `mode:` in the policy files in
place (only that value changes: comments, order and formatting stay).

With --require-clean DURATION and a flow source (--server URL or --flows FILE), a policy is
promoted only if, enforced, it would have denied none of the requests the mesh allowed to its
workloads in that window: each flow is decided again by the engine with the policy's own rules
(an ALLOW policy denies what neither it nor another enforced ALLOW policy of that workload
matches; a DENY policy denies what it matches). Headers and token claims are not in flow
records, so a rule that needs them counts as not matching. An egress policy (direction:
egress) is judged on the egress records of the sources it selects: the connections their
sidecars let through, to the workload each reached. All or nothing: if one policy is refused,
no file is changed.

examples:
  meshwarden promote shop/recommended-backend policies/ --require-clean 24h --server URL
  meshwarden promote shop/a shop/b policies/ --require-clean 7d --flows flows.ndjson

exit status: 0 promoted (or already enforced), 1 refused (would-deny flows; each is named),
2 usage or input error."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "promote",
        help="switch dry-run policies to enforce, if the flows show no would-deny",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "items",
        nargs="+",
        metavar="NS/NAME... PATH",
        help="policies to promote, then policy files or directories",
    )
    p.add_argument(
        "--require-clean",
        type=duration,
        metavar="DURATION",
        help="refuse while flows of the last DURATION show would-deny",
    )
    p.add_argument(
        "--flows",
        action="append",
        default=[],
        metavar="FILE",
        help="NDJSON flow records (repeat for rotated files)",
    )
    p.add_argument(
        "--server",
        type=http_server,
        metavar="URL",
        help="the control plane's health URL (its in-memory flow log)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        refs, paths = _split(args.items)
        result = load_or_raise(paths)
        if result.compiled is None:
            raise InputError(
                f"the policies have {len(result.errors)} error(s); "
                "run `meshwarden check` for details"
            )
        policies = _policies(result.compiled, refs)
        flows = _window(args)
    except InputError as exc:
        return fail(str(exc))
    todo = [p for p in policies if p.dry_run]
    for p in policies:
        if not p.dry_run:
            print(f"{p.ref}: already enforced ({p.location})")
    if flows is not None:
        refused = {p.ref: would_deny(result.compiled, p, flows) for p in todo}
        if any(refused.values()):
            return _refuse(refused)
        _report_thin(todo, result.compiled, flows, args.require_clean)
    for policy in todo:
        edit_mode(policy.document.at("spec", "mode"))
        print(f"{policy.ref}: dry-run -> enforce ({policy.document.at('spec', 'mode')})")
    return _verify(paths, [p.ref for p in todo])


def _split(items: list[str]) -> tuple[list[str], list[str]]:
    refs = [i for i in items if i.count("/") == 1 and not Path(i).exists()]
    paths = [i for i in items if i not in refs]
    if not refs:
        raise InputError("name at least one policy as NS/NAME before the policy paths")
    if not paths:
        raise InputError("give the policy files or directories after the policy names")
    return refs, paths


def _known(mesh: CompiledMesh) -> dict[str, CompiledPolicy | EgressPolicy]:
    """Every AuthorizationPolicy by `ns/name`, ingress and egress."""
    return {**mesh.policies, **mesh.egress_policies}


def _policies(mesh: CompiledMesh, refs: list[str]) -> list[CompiledPolicy | EgressPolicy]:
    known = _known(mesh)
    missing = [r for r in refs if r not in known]
    if missing:
        raise InputError(f"no AuthorizationPolicy {missing[0]} in the given paths")
    return [known[r] for r in refs]


def _window(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    given = bool(args.flows or args.server)
    if (args.require_clean is not None) != given:
        raise InputError("--require-clean DURATION goes with --server URL or --flows FILE")
    if not given:
        return None
    return _flow_input.read_flows(args.flows, args.server, args.require_clean)


def _refuse(refused: dict[str, list[Mapping[str, Any]]]) -> int:
    for ref, flows in refused.items():
        for f in flows[:5]:
            request = "tcp" if f.get("protocol") == "tcp" else f"{f.get('method')} {f.get('path')}"
            source = f.get("sourceIdentity") or f.get("sourceIp")
            print(
                f"{ref}: would deny {source} -> {f['workload']}:{f['port']} {request} "
                f"at {f['time']}",
                file=sys.stderr,
            )
        if len(flows) > 5:
            print(f"{ref}: ... and {len(flows) - 5} more would-deny flow(s)", file=sys.stderr)
    bad = [ref for ref, flows in refused.items() if flows]
    print(
        f"meshwarden promote: refused: {', '.join(bad)} would have denied traffic in the "
        "window; fix the rules (or wait), nothing was changed",
        file=sys.stderr,
    )
    return EXIT_FAILED


def _report_thin(
    todo: list[CompiledPolicy | EgressPolicy],
    mesh: CompiledMesh,
    flows: list[dict[str, Any]],
    window: float,
) -> None:
    for policy in todo:
        if not any(_decided_by(f, policy) in policy.targets for f in flows):
            print(
                f"meshwarden promote: note: no flow reached the workloads of {policy.ref} in "
                f"the last {window:g} s; nothing shows what it would do",
                file=sys.stderr,
            )


def _decided_by(flow: Mapping[str, Any], policy: CompiledPolicy | EgressPolicy) -> Any:
    """The workload of `flow` that `policy` would select: the source of an egress record for
    an egress policy, else the destination of an ingress record (None when neither)."""
    egress = flow.get("direction") == "egress"
    if isinstance(policy, EgressPolicy):
        return flow.get("sourceWorkload") if egress else None
    return None if egress else flow.get("workload")


def edit_mode(where: Location) -> None:
    """Rewrite the `dry-run` value at `where` as `enforce`, keeping everything else byte for
    byte; the file is replaced atomically with its permissions kept."""
    path = Path(os.path.realpath(where.file))
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    line = lines[where.line - 1]
    start = where.column - 1
    for token in ("dry-run", '"dry-run"', "'dry-run'"):
        if line.startswith(token, start):
            lines[where.line - 1] = line[:start] + "enforce" + line[start + len(token) :]
            break
    else:
        raise InputError(f"{where}: expected the value dry-run here")
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write("".join(lines))
        os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _verify(paths: list[str], refs: list[str]) -> int:
    result = load(paths)
    wrong = [r for r in refs if result.compiled is None or _known(result.compiled)[r].dry_run]
    if wrong:
        print(
            f"meshwarden promote: after editing, {', '.join(wrong)} is not enforced or the "
            "policies no longer load; check the files",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
