"""Reading policy files and directories into a checked, compiled mesh."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshwarden.engine import _analysis, _semantics
from meshwarden.engine._compiler import CompiledMesh, compile_documents
from meshwarden.engine._diagnostics import Diagnostic, Location, Severity, error
from meshwarden.engine._documents import Document, validate_document
from meshwarden.engine._registry import Registry, build_registry
from meshwarden.engine._yaml import read_documents

YAML_SUFFIXES = (".yaml", ".yml")


class UsageError(Exception):
    """A path that cannot be read as policy input (missing, unreadable, no YAML in it)."""


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
    """YAML files named or found (recursively, sorted) under the given paths."""
    files: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                str(p) for p in path.rglob("*")
                if p.suffix in YAML_SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )  # fmt: skip
            if not found:
                raise UsageError(f"{raw}: no .yaml or .yml files in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(str(path))
        else:
            raise UsageError(f"{raw}: no such file or directory")
    return files


def parse_text(text: str, file: str = "<text>") -> tuple[list[Document[Any]], list[Diagnostic]]:
    """Validated documents of one YAML text (as if read from `file`)."""
    sources, problems = read_documents(file, text)
    documents: list[Document[Any]] = []
    for source in sources:
        doc, found = validate_document(source)
        problems.extend(found)
        if doc is not None:
            documents.append(doc)
    return documents, problems


def read_files(files: Iterable[str]) -> tuple[list[Document[Any]], list[Diagnostic]]:
    """Parse the given files into documents; unreadable files become diagnostics."""
    documents: list[Document[Any]] = []
    problems: list[Diagnostic] = []
    for file in files:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(error(Location(file), f"cannot read file: {exc}"))
            continue
        found_docs, found = parse_text(text, file)
        documents.extend(found_docs)
        problems.extend(found)
    return documents, problems


def check_documents(documents: list[Document[Any]]) -> tuple[CompiledMesh | None, list[Diagnostic]]:
    """Cross-document errors, then (if none) compile and add warnings."""
    problems = _semantics.duplicates(documents)
    meshes = [d for d in documents if d.kind == "Mesh"]
    _, found = build_registry(
        meshes,
        [d for d in documents if d.kind == "Workload"],
        [d for d in documents if d.kind == "Service"],
        [d for d in documents if d.kind == "Host"],
    )
    problems.extend(found)
    if problems:
        return None, problems
    compiled = compile_documents(documents)
    for policy in compiled.policies.values():
        problems.extend(_semantics.policy_errors(compiled, policy))
    if problems:
        return None, problems + _analysis.warnings(compiled)
    return compiled, _analysis.warnings(compiled)


def load(paths: Sequence[str | os.PathLike[str]]) -> LoadResult:
    """Read, validate, check and compile. Raises UsageError for unusable paths."""
    files = find_files(paths)
    documents, problems = read_files(files)
    compiled = None
    if not any(p.severity is Severity.ERROR for p in problems):
        compiled, found = check_documents(documents)
        problems.extend(found)
    else:
        compiled = None
    problems.sort(key=lambda d: (d.location, d.severity.value != "error"))
    return LoadResult(files, problems, documents, compiled)
