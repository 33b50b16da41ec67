"""The agent's Workload API socket under a connection flood from another local user: 7,000
connections held open by `nobody` cost the agent a bounded number of descriptors, a legitimate
py-spiffe fetch still succeeds, and the log stays a few lines (no traceback per connection)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from meshwarden.engine import SpiffeId
from meshwarden.identities import (
    ConnectionLimits,
    IssuanceError,
    LocalEndpoint,
    SystemClock,
    workload_api_services,
)
from spiffe import WorkloadApiClient

from .conftest import NOBODY_UID, WorkloadApiFixture
from .harness import pidfds_open, wait_for

FLOOD = 7000


def _hold_connections(socket_path: Path, count: int) -> subprocess.Popen[str]:
    """A child that becomes `nobody`, opens `count` connections to the socket and holds them
    until its stdin closes; it prints how many it opened."""
    code = (
        "import os, resource, socket, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({count + 100}, {count + 100}))\n"
        f"os.setgroups([]); os.setgid({NOBODY_UID}); os.setuid({NOBODY_UID})\n"
        "held = []\n"
        f"for _ in range({count}):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        f"    s.connect({str(socket_path)!r})\n"
        "    held.append(s)\n"
        "print(len(held), flush=True)\n"
        "sys.stdin.read()\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


@pytest.fixture
def flood(workload_api: WorkloadApiFixture) -> Iterator[subprocess.Popen[str]]:
    child = _hold_connections(workload_api.socket, FLOOD)
    yield child
    assert child.stdin is not None
    child.stdin.close()
    child.wait(30)


def test_a_connection_flood_from_another_uid_leaves_legitimate_fetches_working(
    workload_api: WorkloadApiFixture,
    flood: subprocess.Popen[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    assert flood.stdout is not None
    assert flood.stdout.readline().strip() == str(FLOOD)  # every connect() went through
    endpoint = workload_api.endpoint
    wait_for(lambda: endpoint.connections_accepted >= FLOOD, timeout=60)  # and was accepted
    limit = endpoint.limits.per_uid
    assert workload_api.loop.call(lambda: endpoint.gate.open[NOBODY_UID]) <= limit
    with WorkloadApiClient(workload_api.address) as client:
        svids = client.fetch_x509_svids(timeout=10)
    assert str(svids[0].spiffe_id) == "spiffe://example.org/ns/ops/sa/root-tool"
    # A few lines for 6,744 refusals: one per kind per 10 s (the refusals, and the held
    # connections closed as silent once the flood outlasts the 10 s first-bytes deadline, as
    # it does on a loaded machine), no traceback.
    records = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) <= 5, records
    assert not any(r.exc_info for r in caplog.records)
    assert f"refused a connection of uid {NOBODY_UID}: {limit} open" in caplog.text
    kinds = (f"refused a connection of uid {NOBODY_UID}", f"uid {NOBODY_UID} that sent nothing")
    assert all(any(kind in line for kind in kinds) for line in records), records


async def _no_jwt(spiffe_id: SpiffeId, audience: object) -> str:
    raise IssuanceError("this endpoint mints no JWT-SVIDs")


def _endpoint(fixture: WorkloadApiFixture, name: str, limits: ConnectionLimits) -> LocalEndpoint:
    """A second endpoint beside the fixture's, serving its cache with `limits`."""
    services = workload_api_services(fixture.cache, _no_jwt, SystemClock())
    endpoint = LocalEndpoint(fixture.socket.with_name(name), services, limits=limits)
    fixture.loop.run(endpoint.start())
    return endpoint


def test_connections_that_send_nothing_are_closed(
    workload_api: WorkloadApiFixture, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = _endpoint(workload_api, "quiet.sock", ConnectionLimits(8, first_bytes_seconds=0.3))
    socket_path = endpoint.socket_path
    child = _hold_connections(socket_path, 8)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "8"
        wait_for(lambda: endpoint.connections_accepted >= 8)  # accepted, then closed as silent
        wait_for(lambda: workload_api.loop.call(lambda: NOBODY_UID not in endpoint.gate.open))
        assert "that sent nothing for 0.3 s" in caplog.text
        with WorkloadApiClient(f"unix://{socket_path}") as client:  # a speaking client is served
            assert client.fetch_x509_svids(timeout=10)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
        workload_api.loop.run(endpoint.stop(0))


def _flood_calls(socket_path: Path, attempts: int) -> subprocess.Popen[str]:
    """A child that becomes `nobody` and makes `attempts` calls as fast as it can, each on a new
    connection (prepared HTTP/2 bytes: ValidateJWTSVID with an empty request, which the agent
    answers INVALID_ARGUMENT at once). It prints "flooding" once it has seen a call or a
    connection refused, then, at the end, the count of each outcome: a grpc-status, or
    "closed" for a connection closed unanswered."""
    bench = Path(__file__).parents[2] / "bench"
    code = (
        "import collections, os, socket, sys\n"
        f"sys.path.insert(0, {str(bench)!r})\n"
        "from _first_fetch import call_bytes\n"
        f"os.setgroups([]); os.setgid({NOBODY_UID}); os.setuid({NOBODY_UID})\n"
        "flight = call_bytes(b'/SpiffeWorkloadAPI/ValidateJWTSVID')\n"
        "seen, told = collections.Counter(), False\n"
        f"for _ in range({attempts}):\n"
        "    data = b''\n"
        "    with socket.socket(socket.AF_UNIX) as s:\n"
        "        s.settimeout(10)\n"
        f"        s.connect({str(socket_path)!r})\n"
        "        try:\n"
        "            s.sendall(flight)\n"
        "            while b'grpc-status' not in data[:-2] and (chunk := s.recv(65536)):\n"
        "                data += chunk\n"
        "        except (BrokenPipeError, ConnectionResetError):\n"
        "            pass  # closed at accept, unread\n"
        "    at = data.find(b'grpc-status')\n"
        "    seen['closed' if at < 0 else data[at + 12 : at + 13].decode()] += 1\n"
        "    if not told and (seen['8'] or seen['closed']):\n"
        "        print('flooding', flush=True); told = True\n"
        "print(dict(seen), flush=True)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_call_flood_from_another_uid_is_refused_while_ours_is_served(
    workload_api: WorkloadApiFixture,
) -> None:
    """`nobody` opens connections and calls faster than its rate: beyond its burst they are
    refused (RESOURCE_EXHAUSTED, or the connection closed at accept) while a py-spiffe fetch as
    root, made during the flood, is served: the rate is counted per uid. The refused
    connections leave no descriptor behind."""
    endpoint = _endpoint(workload_api, "rated.sock", ConnectionLimits(per_second=5.0, burst=40))
    socket_path = endpoint.socket_path
    child = _flood_calls(socket_path, 2000)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "flooding"
        with WorkloadApiClient(f"unix://{socket_path}") as client:
            svids = client.fetch_x509_svids(timeout=10)
        assert str(svids[0].spiffe_id) == "spiffe://example.org/ns/ops/sa/root-tool"
        outcomes = eval(child.stdout.readline())  # the child's dict of counts
    finally:
        child.wait(60)
        workload_api.loop.run(endpoint.stop(0))
    assert outcomes["3"] >= 20  # its burst was served (INVALID_ARGUMENT: an empty request)
    assert outcomes.get("8", 0) + outcomes.get("closed", 0) >= 1000  # the rest refused
    assert sum(outcomes.values()) == 2000
    wait_for(lambda: pidfds_open() == 0)  # refused ones kept none


def test_calls_beyond_the_rate_on_one_connection_are_resource_exhausted(
    workload_api: WorkloadApiFixture,
) -> None:
    """60 calls at once on one connection with a burst of 40: the first ones are answered,
    the rest get RESOURCE_EXHAUSTED, and the connection stays usable."""
    limits = ConnectionLimits(per_second=0.001, burst=40)
    endpoint = _endpoint(workload_api, "rated-calls.sock", limits)
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
    client.initiate_connection()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/SpiffeWorkloadAPI/ValidateJWTSVID"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("workload.spiffe.io", "true"),
    ]
    for sid in range(1, 121, 2):
        client.send_headers(sid, headers)
        client.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    statuses: list[str] = []
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(endpoint.socket_path))
            sock.sendall(client.data_to_send())
            while len(statuses) < 60 and (data := sock.recv(65536)):
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        statuses += [v for k, v in event.headers if k == "grpc-status"]
                sock.sendall(client.data_to_send())
    finally:
        workload_api.loop.run(endpoint.stop(0))
    # The connection took one token: 39 calls answered (an empty request), 21 refused.
    assert statuses.count("3") == 39 and statuses.count("8") == 21
