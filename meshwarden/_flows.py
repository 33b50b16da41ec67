"""The control plane's flow log: the last N authorization decisions the sidecars reported.

Bounded (`--flow-log-size`) and fair: when it is full, a new record pushes out the oldest record
of the workload holding the most, so a workload flooding its access-log stream only ever evicts
its own records once it holds the largest share (drops counted per workload, in `/flows` and on
the counter `meshwarden.flows.dropped`); a record belongs to the workload whose sidecar reported
it (the destination for ingress, the source for egress). Queryable by denied / workload (either
end) / direction / age, and followable (new records as they arrive). Every record is also
counted on the OpenTelemetry API counter `meshwarden.authz.decisions` (decision, policy,
workload, direction); whoever sets up the SDK decides where that goes. Served over the health
endpoint: `GET /flows?denied=1&workload=ns/name&direction=egress&since=300[&follow=1]`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from opentelemetry import metrics

from meshwarden._health import Reply
from meshwarden.engine import CompiledMesh, Direction, Effect, Request, decide
from meshwarden.xds import Flow, TcpAttribution, Verdict

DEFAULT_SIZE = 10_000
FOLLOW_BACKLOG = 1_000  # records a slow follower may fall behind before it misses some
HEARTBEAT_SECONDS = 5.0  # an empty line on quiet follow streams, to notice gone clients


@dataclass(frozen=True)
class FlowQuery:
    denied: bool = False
    workload: str | None = None
    since: float | None = None  # seconds back from now
    limit: int | None = None  # the newest N matches
    direction: Direction | None = None  # ingress or egress records only

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> FlowQuery:
        """From URL query parameters; ValueError names a bad one."""
        try:
            since = float(params["since"]) if "since" in params else None
            limit = int(params["limit"]) if "limit" in params else None
        except ValueError:
            raise ValueError("since (seconds) and limit must be numbers") from None
        denied = params.get("denied", "0").lower() in ("1", "true", "yes")
        direction = params.get("direction") or None
        if direction is not None and direction not in tuple(Direction):
            raise ValueError("direction must be ingress or egress")
        workload = params.get("workload") or None
        return cls(denied, workload, since, limit, Direction(direction) if direction else None)

    def matcher(self, now: float) -> Callable[[Flow], bool]:
        cutoff = None if self.since is None else now - self.since

        def matches(flow: Flow) -> bool:
            return (
                (not self.denied or flow.denied)
                and (self.workload is None or self.workload in (flow.workload, flow.reporter))
                and (self.direction is None or flow.direction == self.direction)
                and (cutoff is None or flow.time >= cutoff)
            )

        return matches


class FlowMirror(Protocol):
    """Also given every record the flow log gets (e.g. `FlowFile`, --flow-log-file)."""

    def add(self, flows: Sequence[Flow]) -> None: ...


class FlowLog:
    """A bounded record of decisions (a `FlowSink` for `AccessLogReceiver`), with a fair share
    per workload. Runs on the event loop of the control plane; not thread-safe."""

    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        clock: Callable[[], float] = time.time,
        meter: metrics.Meter | None = None,
        mirror: FlowMirror | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"flow log size must be at least 1, not {size}")
        self.size = size
        self.received = 0
        self.follower_misses = 0
        self.dropped_by_workload: Counter[str] = Counter()
        # reporting workload → (arrival, record)
        self._records: dict[str, deque[tuple[int, Flow]]] = {}
        self._stored = 0
        self._largest = ""  # a workload holding the most records (checked before trusted)
        self._arrivals = itertools.count()
        self._followers: set[asyncio.Queue[Flow]] = set()
        self._clock = clock
        self.mirror = mirror  # also gets every record, e.g. a FlowFile (--flow-log-file)
        meter = meter or metrics.get_meter("meshwarden.flows")
        self._decisions = meter.create_counter(
            "meshwarden.authz.decisions",
            unit="{decision}",
            description="Authorization decisions reported by sidecars",
        )
        self._dropped = meter.create_counter(
            "meshwarden.flows.dropped",
            unit="{record}",
            description="Flow records pushed out of the full flow log, by the workload that "
            "had reported them",
        )

    @property
    def dropped(self) -> int:
        """Records pushed out by newer ones since the start."""
        return self.received - self._stored

    def add(self, flows: Sequence[Flow]) -> None:
        if self.mirror is not None:
            self.mirror.add(flows)
        for flow in flows:
            self._store(flow)
        self.received += len(flows)
        for flow in flows:
            v = flow.verdict
            self._decisions.add(
                1,
                {
                    "decision": v.decision,
                    "policy": v.policy,
                    "workload": flow.workload,
                    "direction": str(flow.direction),
                },
            )
            for queue in self._followers:
                try:
                    queue.put_nowait(flow)
                except asyncio.QueueFull:
                    self.follower_misses += 1

    def _store(self, flow: Flow) -> None:
        if self._stored >= self.size:
            self._evict_for(flow.reporter)
        own = self._records.setdefault(flow.reporter, deque())
        own.append((next(self._arrivals), flow))
        self._stored += 1
        if len(own) > self._count(self._largest):
            self._largest = flow.reporter

    def _count(self, workload: str) -> int:
        records = self._records.get(workload)
        return len(records) if records else 0

    def _evict_for(self, incoming: str) -> None:
        """Push out the oldest record of the workload holding the most (`incoming` itself
        when it holds as many as any)."""
        if self._count(incoming) >= self._count(self._largest):
            victim = incoming
        else:
            victim = self._largest
            if any(len(r) > len(self._records[victim]) for r in self._records.values()):
                victim = max(self._records, key=lambda w: len(self._records[w]))
        records = self._records[victim]
        records.popleft()
        if not records:
            del self._records[victim]
        self._stored -= 1
        self._largest = victim
        self.dropped_by_workload[victim] += 1
        self._dropped.add(1, {"workload": victim})

    def query(self, query: FlowQuery) -> list[Flow]:
        """Matching records, oldest first."""
        matches = query.matcher(self._clock())
        stored = heapq.merge(*self._records.values(), key=lambda item: item[0])
        found = [flow for _, flow in stored if matches(flow)]
        return found[-query.limit :] if query.limit else found

    async def follow(self, query: FlowQuery) -> AsyncIterator[Flow | None]:
        """The matching records so far, then new ones as they arrive (whatever their age),
        forever; None after `HEARTBEAT_SECONDS` without one."""
        queue: asyncio.Queue[Flow] = asyncio.Queue(FOLLOW_BACKLOG)
        self._followers.add(queue)  # before the snapshot: nothing falls between the two
        live = replace(query, since=None, limit=None).matcher(0)  # age and limit: backlog only
        try:
            for flow in self.query(query):
                yield flow
            while True:
                try:
                    flow = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield None
                    continue
                if live(flow):
                    yield flow
        finally:
            self._followers.discard(queue)

    def stats(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "stored": self._stored,
            "received": self.received,
            "dropped": self.dropped,
            "droppedByWorkload": dict(sorted(self.dropped_by_workload.items())),
            "followers": len(self._followers),
            "followerMisses": self.follower_misses,
        }

    def route(self, params: Mapping[str, str]) -> Reply:
        """`GET /flows`: JSON `{"flows": [...], "size", "stored", "received", "dropped"}`;
        with `follow=1` NDJSON, one record a line (blank lines are heartbeats)."""
        try:
            query = FlowQuery.from_params(params)
        except ValueError as exc:
            return Reply.json({"error": str(exc)}, "400 Bad Request")
        if params.get("follow", "0").lower() in ("1", "true", "yes"):
            return Reply(b"", content_type="application/x-ndjson", stream=self._ndjson(query))
        flows = [flow.to_json() for flow in self.query(query)]
        return Reply.json({"flows": flows, **self.stats()})

    async def _ndjson(self, query: FlowQuery) -> AsyncIterator[bytes]:
        async for flow in self.follow(query):
            yield b"\n" if flow is None else json.dumps(flow.to_json()).encode() + b"\n"


def engine_attribution(mesh: Callable[[], CompiledMesh | None]) -> TcpAttribution:
    """Names the policy behind an allowed tcp connection by deciding it again on the control
    plane's current compiled mesh. None (the flow says `unknown`) when the current mesh would
    not allow it — the sidecar then ran an older configuration — or does not know the workload."""

    def attribute(workload: str, port: int, identity: str | None, ip: str | None) -> Verdict | None:
        current = mesh()
        if current is None or workload not in current.plans:
            return None
        try:
            request = Request.build(workload, port, identity=identity, source_ip=ip)
        except ValueError:
            return None
        decision = decide(current.plan(workload), request)
        return Verdict(Effect.ALLOW, decision.policy, decision.rule) if decision.allowed else None

    return attribute
