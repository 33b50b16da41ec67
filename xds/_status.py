"""Where each sidecar stands with its configuration, as plain values: SYNCED (a stream is open
and it ACKed the current version of every type), NACK (it rejected a version of some type and
has not accepted one since) or STALE (anything else: no stream, or a version not yet ACKed).
Computed from a node's snapshot and the `NodeStatus` its streams left; no I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from meshwarden.xds._cache import NodeStatus, Rejection
from meshwarden.xds._snapshot import PUSH_ORDER, Snapshot


class SyncState(StrEnum):
    """Where a sidecar stands with its configuration (what `meshwarden status` prints)."""

    SYNCED = "SYNCED"
    STALE = "STALE"
    NACK = "NACK"


def short_type(type_url: str) -> str:
    """`type.googleapis.com/envoy.config.listener.v3.Listener` → `Listener`."""
    return type_url.rsplit(".", 1)[-1]


def _stamp(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class TypeSync:
    """One resource type of one sidecar: the version served now, the last one sent, the last
    one ACKed, and the NACK standing for it (None once a later version was ACKed)."""

    type_url: str
    current: str
    sent: str | None
    acked: str | None
    nack: Rejection | None

    def to_json(self) -> dict[str, Any]:
        nack = self.nack
        return {
            "current": self.current,
            "sent": self.sent,
            "acked": self.acked,
            "nack": None
            if nack is None
            else {"version": nack.version, "error": nack.error_message, "at": _stamp(nack.at)},
        }


@dataclass(frozen=True, slots=True)
class SidecarSync:
    """One sidecar's state, the reason it is not SYNCED, and each resource type's versions."""

    workload: str
    state: SyncState
    reason: str  # why it is not SYNCED ("" when it is)
    types: tuple[TypeSync, ...]
    streams: int
    connected_since: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "reason": self.reason,
            "connectedSince": _stamp(self.connected_since),
            "types": {short_type(t.type_url): t.to_json() for t in self.types},
        }


def _types(snapshot: Snapshot | None, status: NodeStatus) -> tuple[TypeSync, ...]:
    held = [] if snapshot is None else [t for t, named in snapshot.resources.items() if named]
    served = [t for t in PUSH_ORDER if t in held] + sorted(set(held) - set(PUSH_ORDER))
    known = served + sorted(set(status.nacked) - set(served))
    return tuple(
        TypeSync(
            type_url=t,
            current="" if snapshot is None else snapshot.version(t),
            sent=status.sent.get(t),
            acked=status.acked.get(t),
            nack=status.nacked.get(t),
        )
        for t in known
    )


def _stale_reason(types: tuple[TypeSync, ...], status: NodeStatus) -> str:
    if status.streams == 0:
        return "no ADS stream open to this control plane"
    for t in types:
        if t.current and t.acked != t.current:
            waiting = "sent, not yet ACKed" if t.sent == t.current else "not yet sent"
            return f"{short_type(t.type_url)} version {t.current} {waiting}"
    return ""


def sidecar_sync(workload: str, snapshot: Snapshot | None, status: NodeStatus) -> SidecarSync:
    """Where the sidecar of `workload` stands: a standing NACK wins over everything (its
    message is what the operator needs), then whatever keeps it from being SYNCED."""
    types = _types(snapshot, status)
    nacked = [t for t in types if t.nack is not None]
    if nacked:
        first = nacked[0]
        assert first.nack is not None
        state = SyncState.NACK
        reason = (
            f"{short_type(first.type_url)} version {first.nack.version}: {first.nack.error_message}"
        )
    else:
        reason = _stale_reason(types, status)
        state = SyncState.STALE if reason else SyncState.SYNCED
    return SidecarSync(workload, state, reason, types, status.streams, status.connected_since)
