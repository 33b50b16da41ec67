"""The telemetry flags `server`, `agent`, `up` and `demo` share, and their set-up."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from meshwarden.cli._collector_log import collector_down_reported_once
from meshwarden.cli._common import fail, percentage
from meshwarden.cli._types import host_port

OTLP_HELP = (
    "send traces to this OTLP/gRPC collector (Jaeger, Tempo, the OpenTelemetry Collector), "
    "e.g. http://127.0.0.1:4317; default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
    "$OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off"
)


def add_arguments(parser: argparse.ArgumentParser, *, sidecars: bool, metrics: bool = True) -> None:
    group = parser.add_argument_group("telemetry")
    group.add_argument("--otlp-endpoint", metavar="URL", help=OTLP_HELP)
    if sidecars:
        group.add_argument(
            "--trace-sampling",
            type=percentage,
            default=100.0,
            metavar="PERCENT",
            help="share of requests that Envoy traces (default 100; a request whose "
            "traceparent is not sampled is not traced)",
        )
    if metrics:
        group.add_argument(
            "--metrics",
            type=host_port,
            metavar="HOST:PORT",
            help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0: a free one; the "
            "URL is printed on stderr at start)",
        )


def set_up(args: argparse.Namespace, service_name: str) -> tuple[Any, Any]:
    """(Telemetry, TracingTarget for sidecars or None). Raises TelemetryError on bad input."""
    from meshwarden._telemetry import otlp_endpoint, setup
    from meshwarden.xds import TracingTarget

    endpoint = otlp_endpoint(getattr(args, "otlp_endpoint", None))
    sampling = getattr(args, "trace_sampling", 100.0)
    telemetry = setup(service_name, endpoint, getattr(args, "metrics", None))
    target = TracingTarget.from_url(endpoint, sampling) if endpoint else None
    return telemetry, target


def run(args: argparse.Namespace, service_name: str, main: Callable[[Any], int]) -> int:
    """Set up telemetry from the flags, run `main(tracing target or None)`, then flush what is
    still buffered. A bad telemetry flag is a usage error (exit 2) before anything starts."""
    from meshwarden._telemetry import TelemetryError

    try:
        telemetry, tracing = set_up(args, service_name)
    except TelemetryError as exc:
        return fail(str(exc))
    if telemetry.metrics_url:  # the port it bound: `--metrics 127.0.0.1:0` is findable
        prog = getattr(args, "command_prog", "meshwarden")
        print(f"{prog}: metrics at {telemetry.metrics_url}", file=sys.stderr, flush=True)
    with collector_down_reported_once(getattr(args, "command_prog", "meshwarden")):
        try:
            return main(tracing)
        finally:
            telemetry.shutdown()
