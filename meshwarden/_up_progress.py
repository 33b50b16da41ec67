"""What `meshwarden up` tells its user about the sidecars: how many ACKed, every NACK with
Envoy's message, sidecars that cannot get an identity (and why), and Envoys that keep exiting
(restarted with a growing delay instead of stopping the mesh)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from meshwarden.xds import SnapshotCache

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # an Envoy that ran this long starts again from the first delay


class Progress:
    """Prints each fact once: ACK counts when they change, each NACK, each distinct problem."""

    def __init__(self, report: TextIO) -> None:
        self.report = report
        self._acked: tuple[int, int] | None = None
        self._nacks: dict[str, int] = {}
        self._said: dict[str, str] = {}

    def say(self, line: str) -> None:
        print(line, file=self.report, flush=True)

    def acked(self, done: int, total: int) -> None:
        if self._acked != (done, total):
            self._acked = (done, total)
            self.say(f"sidecars ACKed {done}/{total}")

    def once(self, key: str, line: str) -> None:
        """Say `line` unless it is what was last said about `key`."""
        if self._said.get(key) != line:
            self._said[key] = line
            self.say(line)

    def forget(self, key: str) -> None:
        self._said.pop(key, None)

    def nacks(self, cache: SnapshotCache, refs: Sequence[str]) -> None:
        """Print the rejections each sidecar's Envoy sent since the last call."""
        for ref in refs:
            rejections = cache.status(ref).rejections
            for rejection in rejections[self._nacks.get(ref, 0) :]:
                kind = rejection.type_url.rsplit(".", 1)[-1]
                message = " ".join(rejection.error_message.split())[:500]
                self.say(f"NACK from {ref}: {kind} version {rejection.version}: {message}")
            self._nacks[ref] = len(rejections)


def current_nack(cache: SnapshotCache, ref: str) -> str | None:
    """Envoy's message when the sidecar rejected the version it is being served now."""
    snapshot = cache.snapshot(ref)
    if snapshot is None:
        return None
    for rejection in reversed(cache.status(ref).rejections):
        if rejection.version == snapshot.version(rejection.type_url):
            return " ".join(rejection.error_message.split())[:500]
    return None


class IdentityNotes(logging.Handler):
    """Keeps the node agent's warnings (e.g. `server refused an SVID for ID: reason`) so `up`
    can say why a sidecar has no identity."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines = [*self.lines[-99:], record.getMessage()]

    def reason(self, spiffe_id: str) -> str:
        for line in reversed(self.lines):
            if spiffe_id in line:
                return line
        return f"the node agent holds no SVID for {spiffe_id} (the server issued none)"


@dataclass
class Restarts:
    """One sidecar's recent exits: the delay doubles per exit in a row, up to BACKOFF_MAX_S."""

    failures: int = 0
    due: float | None = None  # when to start it again
    started: float = 0.0

    def exited(self, now: float) -> float:
        if now - self.started > STABLE_S:
            self.failures = 0
        self.failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** min(self.failures - 1, 10))
        self.due = now + delay
        return delay

    def ready(self, now: float) -> bool:
        return self.due is not None and now >= self.due

    def restarted(self, now: float) -> None:
        self.due, self.started = None, now


def monotonic() -> float:
    return float(time.monotonic())
