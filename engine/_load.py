"""Reading policy files and directories into a checked, compiled mesh."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshwarden.engine import _analysis, _semantics
from meshwarden.engine._collection import collection_paused
from meshwarden.engine._compiler import CompiledMesh, compile_documents
from meshwarden.engine._diagnostics import Diagnostic, Location, Severity, error
from meshwarden.engine._documents import Document, validate_document
from meshwarden.engine._files import UsageError, read_text, scan_files
from meshwarden.engine._limits import LIMITS, InputLimits, over_limit
from meshwarden.engine._registry import Registry, build_registry
from meshwarden.engine._yaml import read_documents


@dataclass(slots=True)
class LoadResult:
    """Everything found in the inputs. `compiled` is None when there are errors."""

    files: list[str]
    diagnostics: list[Diagnostic]
    documents: list[Document[Any]] = field(default_factory=list)
    compiled: CompiledMesh | None = None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return self.compiled is not None

    @property
    def registry(self) -> Registry | None:
        return self.compiled.registry if self.compiled else None


def find_files(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """YAML files named or found (recursively, sorted) under the given paths; raises UsageError
    for a path that cannot be used (`scan_files` reports unreadable directories instead)."""
    files, problems = scan_files(paths)
    if problems:
        raise UsageError(str(problems[0]))
    return files


def parse_text(
    text: str, file: str = "<text>", limits: InputLimits = LIMITS
) -> tuple[list[Document[Any]], list[Diagnostic]]:
    """Validated documents of one YAML text (as if read from `file`)."""
    with collection_paused():
        return _parse_text(text, file, limits)


def _parse_text(
    text: str, file: str, limits: InputLimits
) -> tuple[list[Document[Any]], list[Diagnostic]]:
    if len(text) > limits.file_bytes:
        what = f"text is longer than {limits.file_bytes:,} characters"
        return [], [error(Location(file), over_limit(what))]
    sources, problems = read_documents(file, text, limits)
    refused = {p.location for p in problems}  # a refused value is not reported twice
    documents: list[Document[Any]] = []
    for source in sources:
        doc, found = validate_document(source)
        problems.extend(p for p in found if p.location not in refused)
        if doc is not None:
            documents.append(doc)
    return documents, problems


def read_files(
    files: Iterable[str], limits: InputLimits = LIMITS
) -> tuple[list[Document[Any]], list[Diagnostic]]:
    """Validated documents of every file; a file that cannot be read is a diagnostic."""
    documents: list[Document[Any]] = []
    problems: list[Diagnostic] = []
    for file in files:
        text, problem = read_text(file, limits)
        if text is None:
            problems.append(problem or error(Location(file), "cannot read file"))
            continue
        found_docs, found = parse_text(text, file, limits)
        documents.extend(found_docs)
        problems.extend(found)
    return documents, problems


def check_documents(
    documents: list[Document[Any]], limits: InputLimits = LIMITS
) -> tuple[CompiledMesh | None, list[Diagnostic]]:
    """Cross-document errors, then (if none) compile and add warnings."""
    with collection_paused():
        return _check_documents(documents, limits)


def _check_documents(
    documents: list[Document[Any]], limits: InputLimits
) -> tuple[CompiledMesh | None, list[Diagnostic]]:
    problems = _semantics.duplicates(documents)
    meshes = [d for d in documents if d.kind == "Mesh"]
    registry, found = build_registry(
        meshes,
        [d for d in documents if d.kind == "Workload"],
        [d for d in documents if d.kind == "Service"],
        [d for d in documents if d.kind == "Host"],
    )
    problems.extend(found)
    problems.extend(_semantics.reserved_identities(documents, registry.trust_domain))
    problems.extend(_semantics.plan_size(documents, registry, limits.rule_targets))
    if problems:
        return None, problems
    compiled = compile_documents(documents)
    for policy in compiled.policies.values():
        problems.extend(_semantics.policy_errors(compiled, policy))
    if problems:
        return None, problems + _analysis.warnings(compiled)
    return compiled, _analysis.warnings(compiled)


def load(paths: Sequence[str | os.PathLike[str]]) -> LoadResult:
    """Read, validate, check and compile. Raises UsageError for a named path that does not
    exist; everything else (unreadable files, files over a limit) is a diagnostic."""
    with collection_paused():
        return _load(paths)


def _load(paths: Sequence[str | os.PathLike[str]]) -> LoadResult:
    files, problems = scan_files(paths)
    documents, found = read_files(files)
    problems.extend(found)
    compiled = None
    if not any(p.severity is Severity.ERROR for p in problems):
        compiled, found = check_documents(documents)
        problems.extend(found)
    else:
        compiled = None
    problems.sort(key=lambda d: (d.location, d.severity.value != "error"))
    return LoadResult(files, problems, documents, compiled)
