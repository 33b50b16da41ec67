"""The policy directory as the control plane sees it: the last good compiled mesh, reloaded
when a file changes; a broken edit is reported (FILE:LINE:COL) and changes nothing.

Nothing in the directory can raise out of here: a file the engine cannot read (or a bug it
trips over) is a rejected change with the error on /healthz, and the last good mesh keeps
serving. Changes are read only once they settled (`_policy_files`), and a change that would
loosen the Mesh document is refused (`_policy_guard`). `reload_if_changed` is blocking and
meant for a worker thread: the mesh and status it publishes are replaced, never mutated."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TextIO

from opentelemetry import trace
from opentelemetry.trace import SpanContext, Status, StatusCode

from meshwarden import engine
from meshwarden._policy_files import (
    SETTLE_SECONDS,
    DirectoryContents,
    PolicyFile,
    ScanError,
    SettledDirectory,
    fingerprint,
)
from meshwarden._policy_guard import ALLOW_LOOSENING, refused, workload_mtls

__all__ = [
    "Policies",
    "PolicySource",
    "PolicyStatus",
    "collection_paused",
    "fingerprint",
    "settle_collections",
]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("meshwarden.policies")
MAX_MESSAGE = 500  # characters of an exception's text carried into /healthz


@dataclass(frozen=True)
class PolicyStatus:
    """What the health endpoint reports about policies."""

    version: str = ""
    loaded: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return bool(self.version) and not self.errors


def _error(file: str, message: str) -> engine.Diagnostic:
    return engine.Diagnostic(engine.Location(file), engine.Severity.ERROR, message)


def _parse(file: PolicyFile) -> tuple[list[Any], list[engine.Diagnostic]]:
    """Documents and problems of one file's bytes; an exception from the engine is a problem
    located at the file."""
    if file.error is not None:
        return [], [_error(file.path, file.error)]
    try:
        documents, problems = engine.parse_text(file.content.decode("utf-8"), file.path)
        return documents, problems
    except UnicodeDecodeError as exc:
        return [], [_error(file.path, f"cannot read file: not UTF-8 ({exc.reason})")]
    except Exception as exc:  # RecursionError, ValueError, MemoryError, a bug: never a crash
        log.warning("the policy loader raised on %s", file.path, exc_info=True)
        text = f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE]
        return [], [_error(file.path, f"cannot load this file: {text}")]


class PolicySource(Protocol):
    """Where policies come from: a settled directory, or the shared store's head revision.
    `poll` returns complete contents once per change (None meanwhile); ScanError when the
    source cannot be read."""

    settle: float

    @property
    def settling(self) -> bool: ...

    def poll(self) -> DirectoryContents | None: ...

    def forget(self) -> None: ...


class _CollectionPause:
    """Counts the threads that paused collection; the last one out restores it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0
        self.was_enabled = False


_pause = _CollectionPause()


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection while a mesh is compiled or encoded: a full collection
    walks every object of the process (a million for a 10,000-rule mesh) holding the GIL for
    seconds, which would stall the event loop serving xDS and /healthz. Reloads leave no
    cyclic garbage behind (measured), so nothing piles up; `settle_collections` afterwards."""
    with _pause.lock:
        if _pause.holders == 0:
            _pause.was_enabled = gc.isenabled()
            gc.disable()
        _pause.holders += 1
    try:
        yield
    finally:
        with _pause.lock:
            _pause.holders -= 1
            if _pause.holders == 0 and _pause.was_enabled:
                gc.enable()


def settle_collections() -> None:
    """After a large change was applied: exempt what is alive now (the new mesh, its
    snapshots) from future collections, which then only walk objects created since."""
    gc.freeze()


class Policies:
    """The last good compiled mesh of a policy directory."""

    def __init__(
        self,
        directory: Path,
        report: TextIO = sys.stderr,
        settle: float = SETTLE_SECONDS,
        source: PolicySource | None = None,
    ) -> None:
        """`directory` names the source in messages; `source` (default: the directory,
        settled) is where the contents come from."""
        self.directory = directory
        self.mesh: engine.CompiledMesh | None = None
        self.status = PolicyStatus()
        self.reloading_since: float | None = None  # time.time() a compile started; None: idle
        self._files: PolicySource = source or SettledDirectory(directory, settle, watch_writes=True)
        self._scan_error: str | None = None
        self._parsed: dict[tuple[str, str], tuple[list[Any], list[engine.Diagnostic]]] = {}
        self._report = report
        self.trace_context: SpanContext | None = None  # of the last reload (pushes link to it)
        self.contents: DirectoryContents | None = None  # what `mesh` was compiled from
        # held by a reload (in a worker thread) and by `close`: the source's watch is never
        # closed under a reload reading it (its fd number could be another file's by then)
        self._in_use = threading.Lock()

    @property
    def registry(self) -> engine.Registry | None:
        return self.mesh.registry if self.mesh else None

    @property
    def settling(self) -> bool:
        """A change was seen and is waiting to settle before it is read."""
        return self._files.settling

    def next_poll(self, interval: float) -> float:
        """When to poll again: after `interval`, or sooner when a complete change waits only
        for its burst of writes to end (a source without a write watch: `interval`)."""
        ready_in = getattr(self._files, "ready_in", None)
        return interval if ready_in is None else min(interval, ready_in + 0.001)

    @property
    def wake_fd(self) -> int | None:
        """Readable when the policy directory is written (inotify); None: poll on a timer."""
        fd = getattr(self._files, "wake_fd", None)
        return fd if isinstance(fd, int) else None

    def close(self) -> None:
        """Release what watching the source holds (the policy directory's inotify instance),
        once a reload in progress (a stopping control plane's worker thread) has ended."""
        close = getattr(self._files, "close", None)
        if callable(close):
            with self._in_use:
                close()

    def reload_if_changed(self) -> frozenset[str] | None:
        """The workloads whose plans changed, or None when nothing (valid) changed. Each
        reload (a settled change) is a span `meshwarden.policies.reload`. Never raises."""
        with self._in_use:
            return self._reload_if_changed()

    def _reload_if_changed(self) -> frozenset[str] | None:
        try:
            contents = self._poll()
            if contents is None:
                return None
            return self._traced_reload(contents)
        except Exception as exc:  # a bug here must not stop the control plane either
            log.exception("reloading policies failed")
            self._reject(
                [
                    f"{self.directory}: error: internal error while reloading policies: {exc!r}"[
                        :MAX_MESSAGE
                    ]
                ]
            )
            return None

    def reload_when_settled(self, timeout: float = 10.0) -> frozenset[str] | None:
        """Poll (sleeping) until a pending change has settled and was applied: for start-up
        and tests, never on the event loop."""
        deadline = time.monotonic() + timeout
        affected = self.reload_if_changed()
        while self.settling and time.monotonic() < deadline:
            time.sleep(min(0.05, self._files.settle / 4 or 0.05))
            affected = self.reload_if_changed() or affected
        return affected

    def _poll(self) -> DirectoryContents | None:
        if self._scan_error is not None:
            self._files.forget()  # once it is back, apply it even if its files did not change
        try:
            contents = self._files.poll()
        except ScanError as exc:
            if str(exc) != self._scan_error:  # report once, not on every poll
                self._scan_error = str(exc)
                self._reject([f"{exc}: error: cannot read the policy directory"])
            return None
        self._scan_error = None
        return contents

    def _traced_reload(self, contents: DirectoryContents) -> frozenset[str] | None:
        with _tracer.start_as_current_span("meshwarden.policies.reload") as span:
            self.trace_context = span.get_span_context()
            rejected_before = self.status.rejected
            self.reloading_since = time.time()
            try:
                with collection_paused():
                    affected = self._reload(contents)
            finally:
                self.reloading_since = None
            span.set_attribute("meshwarden.policy.files", len(contents.files))
            span.set_attribute("meshwarden.policy.version", self.status.version)
            if self.status.rejected != rejected_before:
                span.set_attribute("meshwarden.policy.errors", self.status.errors[:50])
                span.set_status(Status(StatusCode.ERROR, "policies rejected; last good kept"))
            else:
                span.set_attribute("meshwarden.policy.workloads_affected", len(affected or ()))
            return affected

    def _reload(self, contents: DirectoryContents) -> frozenset[str] | None:
        if not contents.files:
            self._reject([f"{self.directory}: no .yaml or .yml files in this directory"])
            return None
        documents, problems = self._read(contents.files)
        errors = [p for p in problems if p.severity is engine.Severity.ERROR]
        if errors:
            self._reject([str(p) for p in errors])
            return None
        try:
            result = engine.reload(self.mesh, documents)
        except Exception as exc:  # a bug must not take down the last good configuration
            log.exception("compiling policies failed")
            self._reject(
                [
                    f"{self.directory}: error: internal error while compiling policies: {exc!r}"[
                        :MAX_MESSAGE
                    ]
                ]
            )
            return None
        if result.mesh is None:
            self._reject([str(p) for p in result.errors])
            return None
        if not self._accept_mesh_change(result.mesh):
            return None
        self.contents = contents
        return self._apply(result)

    def _accept_mesh_change(self, new: engine.CompiledMesh) -> bool:
        """False (and the change rejected) when it would loosen the running Mesh."""
        if self.mesh is None or new is self.mesh:
            return True
        before, after = self.mesh.registry, new.registry
        refusals, accepted = refused(before.mesh, after.mesh, workload_mtls(before, after))
        for item in accepted:
            log.warning('accepting a loosening of the mesh (%s: "true"): %s', ALLOW_LOOSENING, item)
            print(f"warning: accepted because of {ALLOW_LOOSENING}: {item}", file=self._report)
        if refusals:
            for item in refusals:
                log.error("policy change refused: %s", item)
            self._reject([str(item) for item in refusals])
            return False
        return True

    def _apply(self, result: engine.Reload) -> frozenset[str] | None:
        assert result.mesh is not None
        for warning in result.diagnostics:
            print(warning, file=self._report)
        previous, self.mesh = self.mesh, result.mesh
        self.status = PolicyStatus(
            result.mesh.version, self.status.loaded + 1, self.status.rejected
        )
        how = "incrementally" if result.incremental else "fully"
        print(
            f"policies {result.mesh.version}: compiled {how}, "
            f"{len(result.affected)} workload(s) affected",
            file=self._report,
        )
        if previous is not None and set(previous.plans) != set(result.mesh.plans):
            return frozenset(previous.plans) | frozenset(result.mesh.plans)
        return result.affected

    def _read(self, files: tuple[PolicyFile, ...]) -> tuple[list[Any], list[Any]]:
        """Documents and problems of every file, parsing only files whose content changed
        since the last read."""
        parsed = {}
        for file in files:
            key = (file.path, file.digest)
            cached = self._parsed.get(key)
            parsed[key] = cached if cached is not None else _parse(file)
        self._parsed = parsed
        documents = [d for docs, _ in parsed.values() for d in docs]
        problems = [p for _, found in parsed.values() for p in found]
        return documents, problems

    def _reject(self, errors: list[str]) -> None:
        """Keep the last good mesh; report `errors`."""
        for line in errors:
            print(line, file=self._report)
        kept = self.mesh.version if self.mesh else "none"
        print(
            f"policies rejected: {len(errors)} error(s); still serving version {kept}",
            file=self._report,
            flush=True,
        )
        self.status = replace(self.status, errors=errors, rejected=self.status.rejected + 1)
