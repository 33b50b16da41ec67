"""The policy directory as the control plane sees it: the last good compiled mesh, reloaded
when a file changes; a broken edit is reported (FILE:LINE:COL) and changes nothing."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from opentelemetry import trace
from opentelemetry.trace import SpanContext, Status, StatusCode

from meshwarden import engine

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("meshwarden.policies")
Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(directory: Path) -> Fingerprint:
    """(path, mtime, size) of every policy file, as `meshwarden check` would find them."""
    found = []
    for path in sorted(directory.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(directory).parts)
        if path.suffix in (".yaml", ".yml") and not hidden and path.is_file():
            stat = path.stat()
            found.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


@dataclass
class PolicyStatus:
    """What the health endpoint reports about policies."""

    version: str = ""
    loaded: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return bool(self.version) and not self.errors


class Policies:
    """The last good compiled mesh of a policy directory."""

    def __init__(self, directory: Path, report: TextIO = sys.stderr) -> None:
        self.directory = directory
        self.mesh: engine.CompiledMesh | None = None
        self.status = PolicyStatus()
        self._seen: Fingerprint | None = None
        self._parsed: dict[tuple[str, int, int], tuple[list[Any], list[Any]]] = {}
        self._report = report
        self.trace_context: SpanContext | None = None  # of the last reload (pushes link to it)

    @property
    def registry(self) -> engine.Registry | None:
        return self.mesh.registry if self.mesh else None

    def reload_if_changed(self) -> frozenset[str] | None:
        """The workloads whose plans changed, or None when nothing (valid) changed. Each
        reload (a file changed) is a span `meshwarden.policies.reload`."""
        current = fingerprint(self.directory)
        if current == self._seen:
            return None
        self._seen = current
        with _tracer.start_as_current_span("meshwarden.policies.reload") as span:
            self.trace_context = span.get_span_context()
            rejected_before = self.status.rejected
            affected = self._reload(current)
            span.set_attribute("meshwarden.policy.files", len(current))
            span.set_attribute("meshwarden.policy.version", self.status.version)
            if self.status.rejected != rejected_before:
                span.set_attribute("meshwarden.policy.errors", self.status.errors[:50])
                span.set_status(Status(StatusCode.ERROR, "policies rejected; last good kept"))
            else:
                span.set_attribute("meshwarden.policy.workloads_affected", len(affected or ()))
            return affected

    def _reload(self, current: Fingerprint) -> frozenset[str] | None:
        if not current:
            self._reject([f"{self.directory}: no .yaml or .yml files in this directory"])
            return None
        documents, problems = self._read(current)
        errors = [p for p in problems if p.severity is engine.Severity.ERROR]
        if errors:
            self._reject([str(p) for p in errors])
            return None
        try:
            result = engine.reload(self.mesh, documents)
        except Exception as exc:  # a bug must not take down the last good configuration
            log.exception("reloading policies failed")
            self._reject([f"internal error while compiling policies: {exc!r}"])
            return None
        if result.mesh is None:
            self._reject([str(p) for p in result.errors])
            return None
        for warning in result.diagnostics:
            print(warning, file=self._report)
        previous, self.mesh = self.mesh, result.mesh
        self.status = PolicyStatus(result.mesh.version, self.status.loaded + 1,
                                   self.status.rejected)  # fmt: skip
        how = "incrementally" if result.incremental else "fully"
        print(f"policies {result.mesh.version}: compiled {how}, "
              f"{len(result.affected)} workload(s) affected", file=self._report)  # fmt: skip
        if previous is not None and set(previous.plans) != set(result.mesh.plans):
            return frozenset(previous.plans) | frozenset(result.mesh.plans)
        return result.affected

    def _read(self, files: Fingerprint) -> tuple[list[Any], list[Any]]:
        """Documents and problems of every file, re-parsing only files whose (path, mtime,
        size) changed since the last read."""
        parsed = {}
        for key in files:
            cached = self._parsed.get(key)
            if cached is None:
                cached = engine.read_files([key[0]])
            parsed[key] = cached
        self._parsed = parsed
        documents = [d for docs, _ in parsed.values() for d in docs]
        problems = [p for _, found in parsed.values() for p in found]
        return documents, problems

    def _reject(self, errors: list[str]) -> None:
        for line in errors:
            print(line, file=self._report)
        kept = self.mesh.version if self.mesh else "none"
        print(f"policies rejected: {len(errors)} error(s); still serving version {kept}",
              file=self._report)  # fmt: skip
        self.status.errors = errors
        self.status.rejected += 1
