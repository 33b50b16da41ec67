"""The agent's Workload API socket under a connection flood from another local user: 7,000
connections held open by `nobody` cost the agent a bounded number of descriptors, a legitimate
py-spiffe fetch still succeeds, and the log stays a few lines (no traceback per connection)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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
from .harness import wait_for

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


def test_connections_that_send_nothing_are_closed(
    workload_api: WorkloadApiFixture, caplog: pytest.LogCaptureFixture
) -> None:
    socket_path = workload_api.socket.with_name("quiet.sock")
    limits = ConnectionLimits(per_uid=8, first_bytes_seconds=0.3)
    services = workload_api_services(workload_api.cache, _no_jwt, SystemClock())
    endpoint = LocalEndpoint(socket_path, services, limits=limits)
    workload_api.loop.run(endpoint.start())
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
