"""A trace collector that is down is reported once, as one line, instead of the OpenTelemetry
SDK's retry log (a "Transient error ... retrying" and a "Failed to export" line per batch, for
as long as the process runs). Spans are dropped while it is down; the mesh is unaffected."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"
_EXPORT_FAILURES = ("Transient error", "Failed to export")


class CollectorDown(logging.Filter):
    """Turns the first export failure into `PROG: warning: ...` and drops the rest."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog
        self.reported = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_EXPORT_FAILURES):
            return True
        if self.reported:
            return False
        self.reported = True
        endpoint = next((a for a in record.args or () if isinstance(a, str) and ":" in a), "?")
        record.msg = (
            "%s: warning: the trace collector at %s does not answer; spans are dropped while it "
            "is down (reported once)"
        )
        record.args = (self.prog, endpoint)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


@contextlib.contextmanager
def collector_down_reported_once(prog: str) -> Iterator[CollectorDown]:
    """While the block runs, OTLP export failures print one line in all."""
    logger = logging.getLogger(EXPORTER_LOGGER)
    down = CollectorDown(prog)
    logger.addFilter(down)
    try:
        yield down
    finally:
        logger.removeFilter(down)
