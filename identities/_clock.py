"""Clocks: the CA and rotation read time only through a `Clock`, so tests can move it."""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    """Where time comes from (injected so rotation is tested without sleeping)."""

    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The real clock (UTC)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that moves only when told to; for tests and simulations."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        start = start or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._now = start

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        self._now += delta
        return self._now
