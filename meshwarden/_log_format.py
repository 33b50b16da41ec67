"""The log lines of the long-running commands (`server`, `agent`): each record on stderr with
its UTC time, level and logger, e.g.
`2026-12-06T22:25:12.345Z WARNING meshwarden.xds._sds: SDS: no identity for this caller ...`,
so an operator can line them up with Envoy's log and with each other across hosts."""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime(datefmt or DATE_FORMAT, time.gmtime(record.created))


def timestamped_logs(level: int = logging.WARNING) -> logging.Handler:
    """Send log records of `level` and above to stderr with a UTC timestamp (replacing
    Python's bare last-resort output); returns the handler (tests remove it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UtcFormatter(FORMAT, DATE_FORMAT))
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return handler
