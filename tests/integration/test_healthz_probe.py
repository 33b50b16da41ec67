"""`GET /healthz?sidecars=none` — what the compose file's and the Kubernetes manifest's probes
ask — answers the control plane's status without the per-sidecar view (which grows with the
mesh: ≈ 1 MB with 1,000 sidecars); the default keeps it; another value is a 400 naming both."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_node_attestation import Plane, running_plane


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path, health="127.0.0.1:0") as running:
        yield running


def _get(plane: Plane, path: str) -> tuple[int, dict]:
    assert plane.plane.health is not None
    conn = http.client.HTTPConnection("127.0.0.1", plane.plane.health.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_probe_gets_the_status_without_the_sidecars(plane: Plane) -> None:
    full = _get(plane, "/healthz")
    assert full[0] == 200 and "sidecars" in full[1]
    status, probe = _get(plane, "/healthz?sidecars=none")
    assert status == 200 and "sidecars" not in probe
    assert probe["status"] == full[1]["status"] == "ok"
    assert probe["policyVersion"] == full[1]["policyVersion"]
    assert _get(plane, "/healthz?sidecars=all")[1].keys() == full[1].keys()


def test_another_value_is_refused_naming_the_two(plane: Plane) -> None:
    status, body = _get(plane, "/healthz?sidecars=some")
    assert status == 400
    assert "sidecars=all" in body["error"] and "sidecars=none" in body["error"]
