"""The import's output: one file per namespace (and mesh.yaml), checked before it is written.

Each translated document is preceded by `# from: FILE:LINE Kind ns/name`, the object it came
from. The whole output is re-read and checked by the engine exactly as `meshwarden check` would;
only output without errors is written, every file first to a temporary name in OUTDIR and then
renamed, so an error never leaves a half-written import behind.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from meshwarden.engine import Diagnostic, Document, check_documents, parse_text
from meshwarden.importers._context import API_VERSION, Emitted

MESH_FILE = "mesh.yaml"
_KIND_ORDER = {"Mesh": 0, "Workload": 1, "Service": 2}
_HEADER = (
    "# Written by `meshwarden import`; each document names the object it was translated from.\n"
)


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file of the output: its name inside OUTDIR and its text."""

    name: str
    text: str


def render_files(mesh: dict[str, Any], documents: Iterable[Emitted]) -> list[OutputFile]:
    """mesh.yaml, then NAMESPACE.yaml for each namespace (workloads, services, then policies
    in input order)."""
    by_namespace: dict[str, list[Emitted]] = defaultdict(list)
    for emitted in documents:
        by_namespace[emitted.namespace].append(emitted)
    mesh_doc = {"apiVersion": API_VERSION, "kind": "Mesh", "metadata": {"name": "mesh"}}
    files = [OutputFile(MESH_FILE, _HEADER + _dump({**mesh_doc, "spec": mesh}))]
    for namespace in sorted(by_namespace):
        ordered = sorted(
            by_namespace[namespace], key=lambda e: _KIND_ORDER.get(e.document["kind"], 9)
        )
        parts = [_with_origin(e) for e in ordered]
        files.append(OutputFile(f"{namespace}.yaml", _HEADER + "---\n".join(parts)))
    return files


def _with_origin(emitted: Emitted) -> str:
    comment = f"# from: {emitted.origin}\n" if emitted.origin else ""
    return comment + _dump(emitted.document)


class _Dumper(yaml.SafeDumper):
    """Writes a value shared by two places twice, never as an anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def check_output(outdir: str, files: list[OutputFile]) -> list[Diagnostic]:
    """Errors `meshwarden check OUTDIR` would report on these files (as if written)."""
    documents: list[Document[Any]] = []
    problems: list[Diagnostic] = []
    for file in files:
        found, diagnostics = parse_text(file.text, os.path.join(outdir, file.name))
        documents.extend(found)
        problems.extend(d for d in diagnostics if d.severity.value == "error")
    if problems:
        return problems
    _, diagnostics = check_documents(documents)
    return [d for d in diagnostics if d.severity.value == "error"]


def write_files(outdir: str, files: list[OutputFile]) -> None:
    """Write every file into `outdir` (created if missing): temporary names first, then one
    rename each. Never follows a symlink at a temporary name. Raises OSError."""
    os.makedirs(outdir, exist_ok=True)
    written: list[tuple[str, str]] = []
    try:
        for file in files:
            final = os.path.join(outdir, file.name)
            temporary = os.path.join(outdir, f".{file.name}.{os.getpid()}.tmp")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(temporary, flags, 0o644)
            written.append((temporary, final))
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(file.text)
        for temporary, final in written:
            os.replace(temporary, final)
    except OSError:
        for temporary, _ in written:
            if os.path.exists(temporary):
                os.unlink(temporary)
        raise
