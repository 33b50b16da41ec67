"""OpenTelemetry SDK set-up — the only place it happens (libraries use the API only).

Traces go to an OTLP/gRPC collector named by `--otlp-endpoint`, else by the standard
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`; `OTEL_SDK_DISABLED=true`
or `OTEL_TRACES_EXPORTER=none` turn tracing off. The other `OTEL_*` variables (service name,
resource attributes, sampler, exporter headers/timeouts/certificates) are honoured by the SDK
itself. Metrics are read by a Prometheus scrape endpoint (`--metrics HOST:PORT`, GET /metrics).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import metrics, trace

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TelemetryError(ValueError):
    pass


def otlp_endpoint(flag: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The collector traces go to, or None when tracing is off. A bad URL is an error that
    names where it came from."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if flag is None and env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    source, value = "--otlp-endpoint", flag
    if value is None:
        for name in ENDPOINT_VARIABLES:
            if env.get(name):
                source, value = name, env[name]
                break
    if not value:
        return None
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip().lower()
        if protocol and protocol != "grpc":
            raise TelemetryError(
                f"{name}={protocol}: meshwarden and its sidecars export OTLP over gRPC only; "
                "point the endpoint at the collector's gRPC port (usually 4317) and unset it"
            )
        if protocol:
            break
    url = value if "://" in value else f"http://{value}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TelemetryError(
            f"{source}={value!r}: expected http://HOST:PORT (or https://) of an OTLP/gRPC "
            "collector, e.g. http://127.0.0.1:4317"
        )
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise TelemetryError(f"{source}={value!r}: the port is not a number") from None
    return url


def metrics_address(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise TelemetryError(f"--metrics {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host or "127.0.0.1", int(port)


@dataclass
class Telemetry:
    """What `setup` installed; `shutdown` flushes spans that are still buffered."""

    endpoint: str | None = None
    metrics_url: str | None = None  # where /metrics is served (the bound port, also for 0)
    _providers: list[Any] = field(default_factory=list)
    _metrics_server: Any = None

    def shutdown(self) -> None:
        for provider in self._providers:
            provider.shutdown()
        self._providers.clear()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None


def _resource(service_name: str) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over our default
    return Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name})


def tracer_provider(endpoint: str, service_name: str) -> Any:
    """An SDK TracerProvider exporting to `endpoint` in batches (not installed globally)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    parts = urlsplit(endpoint)
    exporter = OTLPSpanExporter(
        endpoint=f"{parts.hostname}:{parts.port or 4317}", insecure=parts.scheme == "http"
    )
    provider = TracerProvider(resource=_resource(service_name))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


def setup(service_name: str, endpoint: str | None, metrics_at: str | None = None) -> Telemetry:
    """Install the global tracer and meter providers for this process."""
    telemetry = Telemetry(endpoint=endpoint)
    if endpoint is not None:
        provider = tracer_provider(endpoint, service_name)
        trace.set_tracer_provider(provider)
        telemetry._providers.append(provider)
    address = metrics_address(metrics_at)
    if address is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server

        meter_provider = MeterProvider(
            metric_readers=[PrometheusMetricReader()], resource=_resource(service_name)
        )
        metrics.set_meter_provider(meter_provider)
        telemetry._providers.append(meter_provider)
        try:
            server, _thread = start_http_server(address[1], address[0])
        except OSError as exc:
            raise TelemetryError(f"--metrics {metrics_at}: cannot listen: {exc}") from None
        telemetry._metrics_server = server
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        telemetry.metrics_url = f"http://{host}:{server.server_port}/metrics"
    return telemetry


@contextmanager
def installed(
    service_name: str, endpoint: str | None, metrics_at: str | None = None
) -> Iterator[Telemetry]:
    telemetry = setup(service_name, endpoint, metrics_at)
    try:
        yield telemetry
    finally:
        telemetry.shutdown()
