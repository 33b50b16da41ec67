"""An in-memory `ConfigWatcher`: one snapshot per node key, change callbacks per node, and a
record of what each node's Envoys connected, acknowledged and rejected."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshwarden.xds._ads_events import StreamObserver
from meshwarden.xds._snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class Rejection:
    type_url: str
    version: str
    error_message: str
    at: float = field(default=0.0, compare=False)  # when it arrived (epoch seconds)


@dataclass(slots=True)
class NodeStatus:
    """What a node's Envoys did, as far as its streams told us."""

    streams: int = 0
    acked: dict[str, str] = field(default_factory=dict)  # type URL → last ACKed version
    rejections: list[Rejection] = field(default_factory=list)
    responses: dict[str, int] = field(default_factory=dict)  # type URL → responses sent
    sent: dict[str, str] = field(default_factory=dict)  # type URL → last version sent
    nacked: dict[str, Rejection] = field(default_factory=dict)  # type URL → NACK not yet ACKed
    connected_since: float | None = None  # when its first open stream opened (epoch seconds)
    svid_expiry: dt.datetime | None = None  # of the certificate its newest stream presented
    # its newest stream's bootstrap has the ext_authz HTTP front's cluster (node metadata)
    ext_authz_http: bool = False
    # ... and the front's gRPC (h2) cluster: its gRPC Check is translated to go there
    ext_authz_grpc: bool = False


class SnapshotCache:
    """Snapshots by node key (workload `ns/name`). All methods run on one event loop.

    It is also a `StreamObserver`: give it to the ADS server and it keeps a `NodeStatus` per
    node and forwards every event to the observers added with `observe`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        self._watches: dict[str, list[Callable[[Snapshot], None]]] = {}
        self._status: dict[str, NodeStatus] = {}
        self._observers: list[StreamObserver] = []
        self._progress: asyncio.Event | None = None

    # ConfigWatcher
    def snapshot(self, node: str) -> Snapshot | None:
        return self._snapshots.get(node)

    def watch(self, node: str, changed: Callable[[Snapshot], None]) -> Callable[[], None]:
        self._watches.setdefault(node, []).append(changed)

        def unwatch() -> None:
            callbacks = self._watches.get(node)
            if callbacks is not None and changed in callbacks:
                callbacks.remove(changed)
                if not callbacks:
                    del self._watches[node]

        return unwatch

    def watching(self, node: str) -> int:
        """How many watches (open ADS streams) the node has."""
        return len(self._watches.get(node, ()))

    # writers
    def set_snapshot(self, node: str, snapshot: Snapshot) -> None:
        """Serve `snapshot` to `node` from now on; its open streams push what changed."""
        self._snapshots[node] = snapshot
        for changed in tuple(self._watches.get(node, ())):
            changed(snapshot)
        self._progressed()

    def clear(self, node: str) -> None:
        """Forget a node: new streams get nothing; open streams keep what they have."""
        self._snapshots.pop(node, None)
        self._status.pop(node, None)

    def nodes(self) -> frozenset[str]:
        return frozenset(self._snapshots)

    # status
    def status(self, node: str) -> NodeStatus:
        return self._status.setdefault(node, NodeStatus())

    def known_status(self, node: str) -> NodeStatus | None:
        """The node's status if it has one (read from any thread: nothing is created)."""
        return self._status.get(node)

    def applied(self, node: str) -> bool:
        """A stream of `node` is open and has ACKed the current version of every type its
        snapshot holds resources of."""
        snapshot, status = self._snapshots.get(node), self._status.get(node)
        if snapshot is None or status is None or status.streams == 0:
            return False
        return all(
            status.acked.get(type_url) == snapshot.version(type_url)
            for type_url, resources in snapshot.resources.items()
            if resources
        )

    async def wait_applied(self, nodes: Iterable[str]) -> None:
        """Return once every node in `nodes` is `applied` (no polling: wakes on ACKs)."""
        wanted = frozenset(nodes)
        while not all(self.applied(node) for node in wanted):
            if self._progress is None:
                self._progress = asyncio.Event()
            await self._progress.wait()

    def _progressed(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    def presented(self, node: str, not_after: dt.datetime) -> None:
        """A stream of `node` proved itself with a certificate valid until `not_after`."""
        self.status(node).svid_expiry = not_after

    def observe(self, observer: StreamObserver) -> Callable[[], None]:
        """Forward stream events to `observer`; returns the function that stops it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    # StreamObserver
    def on_connect(self, node: str) -> None:
        status = self.status(node)
        if status.streams == 0:
            status.connected_since = self._clock()
        status.streams += 1
        self._progressed()
        for observer in list(self._observers):
            observer.on_connect(node)

    def on_ack(self, node: str, type_url: str, version: str) -> None:
        status = self.status(node)
        status.acked[type_url] = version
        status.nacked.pop(type_url, None)
        self._progressed()
        for observer in list(self._observers):
            observer.on_ack(node, type_url, version)

    def on_nack(self, node: str, type_url: str, version: str, error_message: str) -> None:
        rejection = Rejection(type_url, version, error_message, self._clock())
        status = self.status(node)
        status.rejections.append(rejection)
        status.nacked[type_url] = rejection
        for observer in list(self._observers):
            observer.on_nack(node, type_url, version, error_message)

    def on_response(self, node: str, type_url: str, version: str, nonce: str = "") -> None:
        status = self.status(node)
        status.responses[type_url] = status.responses.get(type_url, 0) + 1
        status.sent[type_url] = version
        for observer in list(self._observers):
            observer.on_response(node, type_url, version, nonce)

    def on_disconnect(self, node: str) -> None:
        status = self.status(node)
        status.streams = max(0, status.streams - 1)
        if status.streams == 0:
            status.connected_since = None
        for observer in list(self._observers):
            observer.on_disconnect(node)
