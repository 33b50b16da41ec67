"""A trace collector that is down costs one line on stderr, not the SDK's retry log."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from meshwarden.cli._collector_log import EXPORTER_LOGGER, collector_down_reported_once

from ..._loopback import free_port


def test_export_failures_print_one_line_in_all(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # reserved: nothing else can listen there
    # A 2 s budget: each export retries once ("Transient error ...") and then gives up
    # ("Failed to export ..."): two SDK lines per export without the filter.
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True, timeout=2)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    caplog.set_level(logging.DEBUG, logger=EXPORTER_LOGGER)
    with collector_down_reported_once("meshwarden up"):
        for name in ("first", "second"):
            provider.get_tracer("test").start_span(name).end()
    provider.shutdown()
    shown = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert shown == [
        f"meshwarden up: warning: the trace collector at 127.0.0.1:{port} does not answer; "
        "spans are dropped while it is down (reported once)"
    ]
