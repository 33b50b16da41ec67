"""`meshwarden apply|history|diff|rollback --store etcd://...`: policies in the shared store.

`apply` validates exactly the bytes it writes (the checks of `meshwarden check`; FILE:LINE:COL),
refuses a change the replicas would refuse (a loosening of the Mesh), and writes nothing on any
error. Every write is a new revision; `rollback REV` is one too (REV's files, applied again)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from meshwarden.cli._common import (
    CommandFailed,
    InputError,
    add_output_format,
    print_json,
)

if TYPE_CHECKING:
    from meshwarden._policy_store import PolicyRevision, PolicyStore

T = TypeVar("T")

STORE_HELP = (
    "the shared store: etcd://HOST:PORT[,HOST:PORT...] (every member of the cluster); "
    "TLS: add ?ca=FILE[&cert=FILE&key=FILE]; an etcd user: &user=NAME&password-file=FILE"
)
EXAMPLES = {
    "apply": """\
examples:
  meshwarden apply policies/ --store etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 -m "open /api"
  meshwarden apply policies/ --store etcd://127.0.0.1:2379 --expect-revision 41""",
    "history": """\
examples:
  meshwarden history --store etcd://127.0.0.1:2379
  meshwarden history --store etcd://127.0.0.1:2379 -o json | jq '.[-1].revision'""",
    "diff": """\
examples:
  meshwarden diff 41 --store etcd://127.0.0.1:2379        # revision 41 -> the current one
  meshwarden diff 40 41 --store etcd://127.0.0.1:2379 -o json""",
    "rollback": """\
examples:
  meshwarden rollback 41 --store etcd://127.0.0.1:2379 -m "the /api change broke checkout" """,
}


def store_url(text: str) -> Any:
    """An argparse type: an etcd:// store URL."""
    from meshwarden._etcd import StoreUrl
    from meshwarden.identities import StateError

    try:
        url = StoreUrl.parse(text)
        if url.tls is not None:
            url.tls.credentials()  # the files must be readable now, not at the first call
        if url.auth is not None:
            url.auth.password()
    except (ValueError, StateError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{exc.filename}: {exc.strerror or exc}") from None
    return url


def revision_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a revision is a number from 1 up")
    return value


def add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=store_url, required=True, metavar="URL", help=STORE_HELP)
    parser.add_argument(
        "--store-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up when no etcd member answers for this long (default %(default)s)",
    )


COMMANDS = {  # name: (help, description)
    "apply": (
        "validate policies and write them to the shared store as a new revision",
        "Validate the policy files (as `meshwarden check` does) and write all of them to "
        "the shared store in one step, as a new revision every replica then serves. "
        "Nothing is written when a file has an error, when the change would loosen the "
        "running Mesh, or when another apply lands first. Prints the new revision.",
    ),
    "history": (
        "list the policy revisions of the shared store",
        "Every revision of the shared store, oldest first: revision, time (UTC), who "
        "(user@host), digest of its files and message. The current one is marked *.",
    ),
    "diff": (
        "what changed between two revisions, per document and per workload",
        "The documents added, removed and changed from revision REV to REV2 (default: "
        "the current revision), and the workloads whose authorization changed.",
    ),
    "rollback": (
        "make an earlier revision current again (as a new revision)",
        "Apply the files of revision REV again, as a new revision: history is never "
        "rewritten. The replicas serve it as soon as they see it.",
    ),
}


def _command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A store command's parser: its --store and -o options added after its own arguments."""
    help_, description = COMMANDS[name]
    parser = subparsers.add_parser(name, help=help_, description=description, epilog=EXAMPLES[name])
    parser.set_defaults(func=func)
    return parser


def _finish(*parsers: argparse.ArgumentParser) -> None:
    for parser in parsers:
        add_store(parser)
        add_output_format(parser)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from meshwarden.cli import _store_rekey
    from meshwarden.cli._store_diff import run_diff

    apply = _command(subparsers, "apply", run_apply)
    apply.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="policy directories or files (searched for *.yaml, *.yml)",
    )
    apply.add_argument("-m", "--message", default="", help="why (shown by `history`)")
    apply.add_argument(
        "--expect-revision",
        type=int,
        metavar="REV",
        help="apply only if the store is at revision REV (0: empty)",
    )
    history = _command(subparsers, "history", run_history)
    diff = _command(subparsers, "diff", run_diff)
    diff.add_argument("revision", type=revision_number, metavar="REV")
    diff.add_argument("revision2", type=revision_number, nargs="?", metavar="REV2")
    rollback = _command(subparsers, "rollback", run_rollback)
    rollback.add_argument("revision", type=revision_number, metavar="REV")
    rollback.add_argument("-m", "--message", default="", help="why (shown by `history`)")
    _finish(apply, history, diff, rollback)
    _store_rekey.register(subparsers)


def with_store(args: argparse.Namespace, action: Callable[[PolicyStore], Awaitable[T]]) -> T:
    """Run `action` against the store; an unreachable store, a policy key holding what `apply`
    does not write, or a missing revision is a one-line error (exit 1, the last exit 2)."""
    from meshwarden._etcd import Etcd
    from meshwarden._policy_store import (
        PolicyStore,
        RevisionNotFound,
        StoreCorrupt,
        StoreUnavailable,
    )

    async def run() -> T:
        etcd = Etcd.of(args.store, args.store_timeout)
        try:
            return await action(PolicyStore(etcd, args.store.prefix))
        finally:
            await etcd.close()

    try:
        return asyncio.run(run())
    except (StoreUnavailable, StoreCorrupt) as exc:
        raise CommandFailed(f"{args.store}: {exc}") from None
    except RevisionNotFound as exc:
        raise InputError(str(exc)) from None


def read_policy_files(paths: list[str]) -> dict[str, bytes]:
    """{path as stored: bytes} of every policy file under `paths`; a directory's files are
    stored relative to it, a named file by its name."""
    from meshwarden.engine import UsageError, find_files

    out: dict[str, bytes] = {}
    for raw in paths:
        try:
            files = find_files([raw])
        except UsageError as exc:
            raise InputError(str(exc)) from None
        for file in files:
            name = os.path.relpath(file, raw) if os.path.isdir(raw) else os.path.basename(file)
            if name in out:
                raise InputError(f"{file}: a second file named {name} (give one directory)")
            try:
                out[name] = Path(file).read_bytes()
            except OSError as exc:
                raise InputError(f"{file}: cannot read file: {exc.strerror or exc}") from None
    return out


def validate(files: dict[str, bytes], shown: dict[str, str]) -> Any:
    """The compiled mesh of exactly these bytes; InputError after printing every error as
    FILE:LINE:COL (`shown` maps stored names to the paths the user gave)."""
    from meshwarden.engine import Severity, check_documents, parse_text

    documents: list[Any] = []
    problems: list[Any] = []
    for name, data in files.items():
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{shown[name]}: cannot read file: not UTF-8 ({exc.reason})") from None
        found_docs, found = parse_text(text, shown[name])
        documents += found_docs
        problems += found
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if not errors:
        mesh, found = check_documents(documents)
        errors = [p for p in found if p.severity is Severity.ERROR]
        if mesh is not None:
            return mesh
    for problem in sorted(errors, key=lambda p: p.location):
        print(problem, file=sys.stderr)
    raise InputError(f"{len(errors)} error(s); nothing was applied")


def run_apply(args: argparse.Namespace) -> int:
    from meshwarden._policy_store import ConcurrentApply, who_am_i

    files = read_policy_files(args.paths)
    shown = _shown_paths(args.paths, files)
    mesh = validate(files, shown)

    async def apply(store: PolicyStore) -> PolicyRevision | None:
        await _refuse_loosening(store, mesh)
        return await store.apply(files, args.message, who_am_i(), args.expect_revision)

    try:
        record = with_store(args, apply)
    except ConcurrentApply as exc:
        raise CommandFailed(f"refused: {exc}") from None
    return _report_write(args, record, "applied")


def _shown_paths(paths: list[str], files: dict[str, bytes]) -> dict[str, str]:
    """Stored name → the path as the user would open it (for FILE:LINE:COL)."""
    if len(paths) == 1 and os.path.isdir(paths[0]):
        return {name: os.path.join(paths[0], name) for name in files}
    found: dict[str, str] = {}
    for raw in paths:
        for name in files:
            if os.path.isdir(raw) and os.path.exists(os.path.join(raw, name)):
                found.setdefault(name, os.path.join(raw, name))
            elif not os.path.isdir(raw) and os.path.basename(raw) == name:
                found.setdefault(name, raw)
    return {name: found.get(name, name) for name in files}


async def _refuse_loosening(store: PolicyStore, mesh: Any) -> None:
    """InputError when the replicas would refuse this change (it loosens the running Mesh)."""
    from meshwarden._policy_guard import refused

    current = await store.snapshot_at_head()
    if current is None:
        return
    before = compile_files(current[1])
    if before is None:
        return
    refusals, _ = refused(before.registry.mesh, mesh.registry.mesh)
    if refusals:
        for item in refusals:
            print(item, file=sys.stderr)
        raise InputError(
            f"the change loosens the running Mesh (revision {current[0].revision}); "
            "nothing was applied"
        )


def compile_files(files: dict[str, bytes]) -> Any:
    """The compiled mesh of stored files (None if they do not compile)."""
    from meshwarden.engine import check_documents, parse_text

    documents: list[Any] = []
    for name, data in sorted(files.items()):
        documents += parse_text(data.decode("utf-8", "replace"), name)[0]
    return check_documents(documents)[0]


def _report_write(args: argparse.Namespace, record: PolicyRevision | None, verb: str) -> int:
    if record is None:
        if args.output == "json":
            print_json({"changed": False})
        else:
            print("unchanged: the store already serves these files")
        return 0
    if args.output == "json":
        print_json({"changed": True, **record.to_json()})
    else:
        print(
            f"{verb} revision {record.revision} ({len(record.files)} file(s), digest "
            f"{record.digest})"
        )
    return 0


def run_history(args: argparse.Namespace) -> int:
    async def history(store: PolicyStore) -> tuple[list[PolicyRevision], int]:
        return await store.history(), (await store.head())[0]

    records, current = with_store(args, history)
    if args.output == "json":
        print_json([{**r.to_json(), "current": r.revision == current} for r in records])
        return 0
    if not records:
        print("no revisions yet: `meshwarden apply DIR --store URL` writes the first")
        return 0
    print(f"{'':1} {'REV':>5}  {'TIME (UTC)':<25} {'WHO':<24} {'DIGEST':<16}  MESSAGE")
    for r in records:
        mark = "*" if r.revision == current else " "
        note = r.message or (f"rollback to {r.rollback_of}" if r.rollback_of else "")
        print(f"{mark} {r.revision:>5}  {r.time:<25} {r.who[:24]:<24} {r.digest:<16}  {note}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from meshwarden._policy_store import ConcurrentApply, who_am_i

    async def rollback(store: PolicyStore) -> PolicyRevision | None:
        files = await store.contents(await store.revision(args.revision))
        mesh = compile_files(files)
        if mesh is not None:
            await _refuse_loosening(store, mesh)
        return await store.rollback(args.revision, who_am_i(), args.message)

    try:
        record = with_store(args, rollback)
    except ConcurrentApply as exc:
        raise CommandFailed(f"refused: {exc}") from None
    return _report_write(args, record, f"rolled back to revision {args.revision}: now")
