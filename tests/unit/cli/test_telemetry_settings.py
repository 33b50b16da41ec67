"""Where traces go: the flag, else the standard OpenTelemetry variables, else nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshwarden.xds._tracing import TracingTarget

from meshwarden._telemetry import TelemetryError, metrics_address, otlp_endpoint

SHOP = str(Path(__file__).parents[3] / "examples" / "shop")


def test_the_flag_wins_over_the_environment() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317"}
    assert otlp_endpoint("http://flag:4317", env) == "http://flag:4317"


def test_the_traces_variable_wins_over_the_generic_one() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317",
    }
    assert otlp_endpoint(None, env) == "http://traces:4317"
    assert otlp_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}) == (
        "http://collector:4317"
    )


def test_tracing_is_off_by_default_and_when_disabled() -> None:
    assert otlp_endpoint(None, {}) is None
    assert otlp_endpoint("http://x:4317", {"OTEL_SDK_DISABLED": "true"}) is None
    assert (
        otlp_endpoint(
            None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_TRACES_EXPORTER": "none"}
        )
        is None
    )


@pytest.mark.parametrize("bad", ["ftp://x:4317", "http://:4317", "http://host:port"])
def test_a_bad_endpoint_names_its_source(bad: str) -> None:
    with pytest.raises(TelemetryError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        otlp_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": bad})
    with pytest.raises(TelemetryError, match="--otlp-endpoint"):
        otlp_endpoint(bad, {})


def test_only_the_grpc_protocol_is_accepted() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    with pytest.raises(TelemetryError, match="OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"):
        otlp_endpoint(None, {**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    traces_grpc = {
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    assert otlp_endpoint(None, {**endpoint, **traces_grpc}) == "http://collector:4318"


def test_metrics_address_needs_host_and_port() -> None:
    assert metrics_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert metrics_address(":9464") == ("127.0.0.1", 9464)
    assert metrics_address(None) is None
    for bad in ("9464x", "host", "host:99999"):
        with pytest.raises(TelemetryError, match="HOST:PORT"):
            metrics_address(bad)


def test_sidecars_export_to_the_same_collector() -> None:
    assert TracingTarget.from_url("http://127.0.0.1:4317") == TracingTarget("127.0.0.1", 4317)
    assert TracingTarget.from_url("https://otel.example:443", 5).tls
    assert TracingTarget.from_url("https://otel.example:443", 5).sampling == 5


@pytest.mark.parametrize(
    "argv",
    [
        ["server", "--policies", SHOP, "--data-dir", "/nonexistent/x"],
        ["agent", "--server", "127.0.0.1:1", "--data-dir", "/nonexistent/x", "--socket", "/x"],
        ["up", SHOP],
        ["demo"],
    ],
    ids=["server", "agent", "up", "demo"],
)
def test_every_long_running_command_refuses_a_bad_collector_before_starting(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from meshwarden.cli import main

    assert main([*argv, "--otlp-endpoint", "ftp://collector:4317"]) == 2
    assert "--otlp-endpoint='ftp://collector:4317': expected http://HOST:PORT" in (
        capsys.readouterr().err
    )
