"""`meshwarden diff REV [REV2] --store URL`: per document (added, removed, changed: by kind and
namespace/name, with the file it is in) and per workload (whose authorization plan the change
touches, as the engine's incremental reload computes it, plus workloads added or removed)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from meshwarden.cli._common import InputError, print_json
from meshwarden.cli._store import compile_files, with_store

if TYPE_CHECKING:
    from meshwarden._policy_store import PolicyStore


def _documents(files: dict[str, bytes]) -> dict[str, tuple[str, str]]:
    """`Kind ns/name` → (file, content hash) of every document of a revision."""
    mesh = compile_files(files)
    if mesh is None:
        raise InputError("a revision in the store does not compile any more; diff its files")
    return {
        f"{key.kind} {key.namespace}/{key.name}": (mesh.documents[key].source.file, digest)
        for key, digest in mesh.hashes.items()
    }


def compare(before: dict[str, bytes], after: dict[str, bytes]) -> dict[str, Any]:
    """The JSON `diff` prints: documents and workloads that differ."""
    from meshwarden.engine import reload

    old, new = _documents(before), _documents(after)
    documents = (
        [{"change": "added", "document": k, "file": new[k][0]} for k in sorted(new.keys() - old)]
        + [
            {"change": "removed", "document": k, "file": old[k][0]}
            for k in sorted(old.keys() - new)
        ]
        + [
            {"change": "changed", "document": k, "file": new[k][0]}
            for k in sorted(old.keys() & new)
            if old[k][1] != new[k][1]
        ]
    )
    old_mesh, new_mesh = compile_files(before), compile_files(after)
    result = reload(old_mesh, list(new_mesh.documents.values()))
    affected = set(result.affected) if result.mesh is not None else set(new_mesh.plans)
    added = set(new_mesh.plans) - set(old_mesh.plans)
    removed = set(old_mesh.plans) - set(new_mesh.plans)
    workloads = (
        [{"change": "added", "workload": w} for w in sorted(added)]
        + [{"change": "removed", "workload": w} for w in sorted(removed)]
        + [
            {"change": "changed", "workload": w}
            for w in sorted(affected - added - removed)
            if w in new_mesh.plans
        ]
    )
    return {"documents": documents, "workloads": workloads}


def run_diff(args: argparse.Namespace) -> int:
    async def load(store: PolicyStore) -> tuple[int, dict[str, bytes], dict[str, bytes]]:
        second = args.revision2 or (await store.head())[0]
        first = await store.contents(await store.revision(args.revision))
        return second, first, await store.contents(await store.revision(second))

    second, before, after = with_store(args, load)
    changes = compare(before, after)
    if args.output == "json":
        print_json({"from": args.revision, "to": second, **changes})
        return 0
    print(f"revision {args.revision} -> {second}")
    if not changes["documents"]:
        print("no document changed")
    for item in changes["documents"]:
        print(f"  {item['change']:<8} {item['document']}  ({item['file']})")
    if changes["workloads"]:
        print("workloads whose authorization changed:")
    for item in changes["workloads"]:
        print(f"  {item['change']:<8} {item['workload']}")
    return 0
