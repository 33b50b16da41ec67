"""Live reload: from the last good snapshot and a new set of documents to the next snapshot,
incrementally when only AuthorizationPolicies and JwtIssuers changed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshwarden.engine import _semantics
from meshwarden.engine._compiler import CompiledMesh, document_hash
from meshwarden.engine._diagnostics import Diagnostic, Severity
from meshwarden.engine._documents import Document, DocumentKey
from meshwarden.engine._limits import LIMITS
from meshwarden.engine._load import check_documents

INCREMENTAL_KINDS = frozenset({"AuthorizationPolicy", "JwtIssuer"})


@dataclass(frozen=True, slots=True)
class Reload:
    """The outcome of a reload: `mesh` is None when the documents have errors (the caller keeps
    serving the previous snapshot); `affected` are the workloads whose plans were rebuilt."""

    mesh: CompiledMesh | None
    affected: frozenset[str]
    diagnostics: list[Diagnostic]
    incremental: bool

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]


def reload(previous: CompiledMesh | None, documents: list[Document[Any]]) -> Reload:
    """Check and compile `documents` against the `previous` snapshot."""
    problems = _semantics.duplicates(documents)
    if problems:
        return Reload(None, frozenset(), problems, False)
    current = {doc.key: doc for doc in documents}
    if previous is None:
        return _full(documents)
    hashes = {key: document_hash(doc) for key, doc in current.items()}
    changed = [key for key, h in hashes.items() if previous.hashes.get(key) != h]
    deleted = [key for key in previous.hashes if key not in current]
    if not changed and not deleted:
        return Reload(previous, frozenset(), [], True)
    if any(key.kind not in INCREMENTAL_KINDS for key in [*changed, *deleted]):
        return _full(documents)
    too_big = _semantics.plan_size(documents, previous.registry, LIMITS.rule_targets)
    if too_big:
        return Reload(None, frozenset(), too_big, True)
    return _incremental(previous, [current[k] for k in changed], deleted)


def _full(documents: list[Document[Any]]) -> Reload:
    mesh, found = check_documents(documents)
    affected = frozenset(mesh.plans) if mesh else frozenset()
    return Reload(mesh, affected, found, False)


def _incremental(
    previous: CompiledMesh, upserts: list[Document[Any]], deletes: list[DocumentKey]
) -> Reload:
    mesh, affected = previous.with_policy_changes(upserts, deletes)
    touched = {ref for w in affected for ref in mesh.by_workload.get(w, ())}
    problems = [
        p for ref in sorted(touched) for p in _semantics.policy_errors(mesh, mesh.policies[ref])
    ]
    if problems:
        return Reload(None, frozenset(), problems, True)
    return Reload(mesh, affected, [], True)
