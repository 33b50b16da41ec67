"""The one grammar for durations and for HOST:PORT that every command's flags share."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshwarden.cli import build_parser
from meshwarden.cli._types import (
    duration,
    host_port,
    http_server,
    loopback_host_port,
    parse_duration,
    split_host_port,
)

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def test_durations_read_as_a_user_writes_them() -> None:
    written = ["90s", "5m", "1h30m", "500ms", "1.5h", "2d", "0", "1d2h3m4s5ms"]
    assert [parse_duration(t) for t in written] == [
        90,
        300,
        5400,
        0.5,
        5400,
        172800,
        0,
        86400 + 7200 + 180 + 4 + 0.005,
    ]


@pytest.mark.parametrize("bad", ["", "90", "1.5", "5x", "m", "-5m", "5 m", "five", "1h 30m"])
def test_anything_else_is_refused_with_examples(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected a duration like 90s, 5m"):
        duration(bad)


def test_a_bare_number_is_refused_with_the_unit_to_add() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"\(add a unit: 90s\)"):
        duration("90")


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNITS))), min_size=1))
def test_any_sum_of_numbers_with_units_is_their_total(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == pytest.approx(sum(n * UNITS[unit] for n, unit in parts))


def test_host_port_forms() -> None:
    assert split_host_port("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert split_host_port("[::1]:80") == ("::1", 80)
    assert split_host_port("control-plane.internal:0") == ("control-plane.internal", 0)
    assert host_port(":9464") == "127.0.0.1:9464"  # never all interfaces by omission
    assert host_port("[::1]:80") == "[::1]:80"


@pytest.mark.parametrize("bad", ["8443", "host", "host:", "host:65536", "a b:1", "http://h:1"])
def test_host_port_refuses_what_is_not_one(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected HOST:PORT, e\.g\. "):
        host_port(bad)


def test_an_http_server_may_be_given_as_the_url_printed_in_the_ready_line() -> None:
    assert http_server("http://127.0.0.1:41234/healthz") == "127.0.0.1:41234"
    assert http_server("127.0.0.1:41234") == "127.0.0.1:41234"
    with pytest.raises(argparse.ArgumentTypeError, match="expected HOST:PORT or http://"):
        http_server("https://127.0.0.1:41234")


@pytest.mark.parametrize("command", ["server", "agent", "up"])
@pytest.mark.parametrize(
    "address", ["0.0.0.0:9090", "10.0.0.5:9090", "[::]:9090", "example.org:80"]
)
def test_the_unauthenticated_health_endpoint_refuses_a_non_loopback_address(
    command: str, address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # /healthz and /flows answer without authentication (workloads, flows, paths): never exposed
    args = [command, "--health", address]
    with pytest.raises(SystemExit) as exit_info:
        build_parser([command]).parse_args(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"--health {address!r}: this endpoint has no authentication" in error


@pytest.mark.parametrize("address", ["127.0.0.1:0", "127.9.9.9:9090", "[::1]:9090", "localhost:9"])
def test_the_health_endpoint_takes_any_loopback_address(address: str) -> None:
    assert loopback_host_port(address).endswith(address.rpartition(":")[2])
