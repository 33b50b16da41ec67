"""/healthz says `degraded` while a sidecar's NACK stands, naming the workload and Envoy's
message, and `ok` again once that sidecar ACKs a newer version."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from meshwarden._health import health_report
from meshwarden._policies import Policies
from meshwarden._xds import MeshXds

from .test_policy_reload import WORKLOADS, mesh_text

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


def serving(tmp_path: Path) -> MeshXds:
    (tmp_path / "mesh.yaml").write_text(mesh_text())
    (tmp_path / "workloads.yaml").write_text(WORKLOADS)
    policies = Policies(tmp_path, report=io.StringIO(), settle=0)
    policies.reload_if_changed()
    xds = MeshXds(policies)
    xds.publish(None)
    return xds


def report(xds: MeshXds) -> dict:
    return health_report(xds.policies, xds.nacks(), xds.sidecars())


def test_a_nack_makes_health_degraded_until_a_newer_version_is_acked(tmp_path: Path) -> None:
    xds = serving(tmp_path)
    assert report(xds)["status"] == "ok"
    xds.cache.on_connect("shop/backend-1")
    xds.cache.on_nack("shop/backend-1", LISTENER, "v2", "invalid listener: port in use")
    degraded = report(xds)
    assert degraded["status"] == "degraded"
    assert degraded["nacks"] == [
        {
            "workload": "shop/backend-1",
            "type": "Listener",
            "version": "v2",
            "error": "invalid listener: port in use",
        }
    ]
    assert "shop/backend-1 rejected Listener version v2" in str(xds.nacks()[0])
    xds.cache.on_ack("shop/backend-1", LISTENER, "v3")
    assert report(xds)["status"] == "ok" and report(xds)["nacks"] == []


def test_a_nack_of_a_workload_no_longer_served_is_forgotten(tmp_path: Path) -> None:
    xds = serving(tmp_path)
    xds.cache.on_nack("shop/backend-1", LISTENER, "v2", "bad")
    xds.cache.clear("shop/backend-1")
    assert report(xds)["status"] == "ok"


def test_a_snapshot_that_cannot_be_built_is_reported_and_the_last_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xds = serving(tmp_path)
    kept = xds.cache.snapshot("shop/backend-1")

    def broken(mesh: object, ref: str) -> None:
        raise KeyError("a translation bug")

    monkeypatch.setattr(xds.builder, "snapshot", broken)
    xds.publish(None)
    assert xds.cache.snapshot("shop/backend-1") is kept
    health = health_report(
        xds.policies, xds.nacks(), xds.sidecars(), sorted(xds.build_errors.values())
    )
    assert health["status"] == "degraded"
    assert health["errors"] == [
        "shop/backend-1: error: its configuration could not be built; "
        "its sidecar keeps the last one: KeyError('a translation bug')"
    ]
    monkeypatch.undo()
    xds.publish(None)
    assert xds.build_errors == {}
