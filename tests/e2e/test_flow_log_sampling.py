"""`--flow-log-sample`: a large mesh logs a share of its allowed requests, and still every
denial — live, with the sidecars' own access-log filter."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from .._loopback import claim_net
from ._live import MeshwardenUp, sample_app
from .test_flow_log import FlowMesh


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowMesh]:
    mesh = FlowMesh(tmp_path_factory.mktemp("sampled"), claim_net())
    mesh.up = MeshwardenUp(mesh.up.policies, mesh.up.data_dir, ("--flow-log-sample", "0"))
    with sample_app(mesh.values["app_port"]):
        mesh.up.start()
        try:
            yield mesh
        finally:
            assert mesh.up.stop() == 0, mesh.up.log.read_text()[-3000:]


def test_with_no_allowed_sampling_only_the_denials_are_logged(sampled: FlowMesh) -> None:
    allowed = [sampled.traced("GET", "/api/items") for _ in range(20)]
    denied = [sampled.traced("GET", "/api/secret"), sampled.traced("POST", "/api/items")]
    assert {status for status, _ in allowed} == {200}
    assert {status for status, _ in denied} == {403}
    deadline = time.monotonic() + 60
    flows = sampled.flows_json()
    while len(flows) < len(denied) and time.monotonic() < deadline:
        time.sleep(0.2)
        flows = sampled.flows_json()
    time.sleep(1.0)  # a stray allowed record would have arrived by now
    flows = sampled.flows_json()
    assert sorted(f["traceId"] for f in flows) == sorted(trace for _, trace in denied)
    assert {(f["policy"], f["decision"]) for f in flows} == {
        ("shop/no-secrets", "deny"),
        ("default:deny", "deny"),
    }
