"""Limits of the agent's local sockets: connections per caller uid, new connections and calls
per second per caller uid, a deadline for a connection's first bytes, and log lines that stay
few however many connections a flood brings.

A local user can open connections to the Workload API socket (mode 0666) as fast as the kernel
accepts them, and calls on them as fast as it can write; each connection costs the agent a file
descriptor and each call the agent's CPU. With these limits a flood from one uid is refused at
accept (one descriptor for an instant) or answered RESOURCE_EXHAUSTED before any handler runs,
connections that never speak are closed, and callers of other uids are served as before."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)


@dataclass(frozen=True)
class ConnectionLimits:
    """What one caller uid may hold on an agent socket."""

    per_uid: int = 256  # open connections per caller uid; more are closed at once
    first_bytes_seconds: float = 10.0  # a connection that sends nothing for this long is closed
    # New connections and new calls per caller uid, together: a bucket of `burst` refilled at
    # `per_second` (a first fetch is a connection and a call: 512 of them at once, 512 a second
    # after that; a uid flooding the agent gets at most ≈ 7 % of a core). A connection beyond
    # it is closed at accept, a call is answered RESOURCE_EXHAUSTED.
    per_second: float = 1024.0
    burst: int = 1024


@dataclass
class RateLimitedLog:
    """At most one line per `interval` seconds per key; the next line says how many were left
    out."""

    logger: logging.Logger
    interval: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _last: dict[str, float] = field(default_factory=dict)
    _left_out: Counter[str] = field(default_factory=Counter)

    def warning(self, key: str, message: str) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._left_out[key] += 1
            return
        left_out = self._left_out.pop(key, 0)
        suffix = f" ({left_out} more like it in the last {self.interval:g} s)" if left_out else ""
        self._last[key] = now
        self.logger.warning("%s%s", message, suffix)


class UidGate:
    """Counts open connections per uid and admits a new one only below the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[int] = Counter()

    def admit(self, uid: int) -> bool:
        if self.open[uid] >= self.limit:
            return False
        self.open[uid] += 1
        return True

    def release(self, uid: int) -> None:
        self.open[uid] -= 1
        if self.open[uid] <= 0:
            del self.open[uid]


class UidRate:
    """A token bucket per uid: `burst` tokens, `per_second` more each second; `take` spends
    one or says there is none. Buckets back to full are forgotten once more than `KEPT` uids
    are known, so a caller switching uids (inside a user namespace) cannot grow the table."""

    KEPT = 4096

    def __init__(
        self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second, self.burst, self.clock = per_second, burst, clock
        self._buckets: dict[int, tuple[float, float]] = {}  # uid -> (tokens, as of)

    def take(self, uid: int) -> bool:
        now = self.clock()
        bucket = self._buckets.get(uid)
        if bucket is None:
            if len(self._buckets) >= self.KEPT:
                self._forget_full(now)
            tokens = float(self.burst)
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_second)
        taken = tokens >= 1.0
        self._buckets[uid] = (tokens - 1.0 if taken else tokens, now)
        return taken

    def _forget_full(self, now: float) -> None:
        for uid, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.per_second >= self.burst:
                del self._buckets[uid]


class SilenceDeadline(Generic[C]):
    """Calls `expired(connection)` for each watched connection not `heard` within `seconds` of
    being watched. One timer for all of them (armed for the oldest) instead of one per
    connection: watching and hearing are a dict insertion and removal, and connections are
    watched in the order they are accepted, so the oldest is the first to expire."""

    def __init__(self, seconds: float, expired: Callable[[C], None]) -> None:
        self.seconds = seconds
        self._expired = expired
        self._since: dict[C, float] = {}  # insertion order is deadline order
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, connection: C) -> None:
        loop = asyncio.get_running_loop()
        self._since[connection] = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(self.seconds, self._sweep)

    def heard(self, connection: C) -> None:
        self._since.pop(connection, None)

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._since:
            connection = next(iter(self._since))
            left = self._since[connection] + self.seconds - now
            if left > 0:
                self._timer = loop.call_later(left, self._sweep)
                return
            del self._since[connection]
            self._expired(connection)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._since.clear()


def raise_descriptor_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit: a flood is refused at
    accept, but legitimate callers (and Envoy's SDS streams) should not run into a low default
    like 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
