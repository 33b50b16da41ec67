"""Loosening a workload's or a port's mTLS mode on a running control plane (what Istio's
workload- and port-level PeerAuthentication do) is refused unless annotated, as the Mesh-wide
and namespace modes are."""

from __future__ import annotations

import io
from pathlib import Path

from meshwarden._policies import Policies

MESH = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh{mesh_annotations}}}
spec: {{trustDomain: example.org, mtls: {mesh}}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: backend-1, namespace: shop{workload_annotations}}}
spec:
  addresses: [127.0.0.3]{workload}
  ports:
  - {{port: 8080, protocol: http}}
  - {{port: 9000, protocol: tcp{port}}}
"""
ANNOTATED = ', annotations: {"meshwarden.io/allow-loosening": "true"}'


def _write(directory: Path, **values: str) -> None:
    fields = {"mesh": "STRICT", "mesh_annotations": "", "workload_annotations": "", "workload": ""}
    text = MESH.format(**(fields | {"port": ""} | values))
    (directory / "mesh.yaml").write_text(text)


def _loaded(directory: Path, **values: str) -> Policies:
    _write(directory, **values)
    policies = Policies(directory, report=io.StringIO(), settle=0)
    assert policies.reload_if_changed() is not None and policies.status.healthy
    return policies


def _errors(policies: Policies) -> str:
    return "\n".join(policies.status.errors)


def test_a_workload_made_permissive_is_refused_unless_annotated(tmp_path: Path) -> None:
    policies = _loaded(tmp_path)
    _write(tmp_path, workload="\n  mtls: PERMISSIVE")
    assert policies.reload_if_changed() is None
    assert (
        f"{tmp_path / 'mesh.yaml'}:11:9: error: workload shop/backend-1 would loosen mtls from "
        "STRICT to PERMISSIVE; refused (annotate the Mesh document with meshwarden.io/allow-"
        'loosening: "true" to allow it)'
    ) in _errors(policies)
    _write(tmp_path, workload="\n  mtls: PERMISSIVE", workload_annotations=ANNOTATED)
    assert policies.reload_if_changed() is not None and policies.status.healthy


def test_a_port_made_permissive_is_refused_unless_the_mesh_is_annotated(tmp_path: Path) -> None:
    policies = _loaded(tmp_path)
    _write(tmp_path, port=", mtls: PERMISSIVE")
    assert policies.reload_if_changed() is None
    errors = _errors(policies)
    assert "mesh.yaml:13:39: error: port 9000 of workload shop/backend-1 would loosen" in errors
    assert "8080" not in errors  # only the port that loosened
    _write(tmp_path, port=", mtls: PERMISSIVE", mesh_annotations=ANNOTATED)
    assert policies.reload_if_changed() is not None and policies.status.healthy


def test_dropping_a_strict_workload_override_of_a_permissive_mesh_is_refused(
    tmp_path: Path,
) -> None:
    policies = _loaded(tmp_path, mesh="PERMISSIVE", workload="\n  mtls: STRICT")
    _write(tmp_path, mesh="PERMISSIVE")
    assert policies.reload_if_changed() is None
    assert "workload shop/backend-1 would loosen mtls" in _errors(policies)


def test_a_mesh_wide_loosening_is_reported_once_at_the_mesh(tmp_path: Path) -> None:
    policies = _loaded(tmp_path)
    _write(tmp_path, mesh="PERMISSIVE")
    assert policies.reload_if_changed() is None
    assert "mtls would loosen from STRICT to PERMISSIVE" in _errors(policies)
    assert "workload shop/backend-1" not in _errors(policies)


def test_tightening_a_workload_or_a_port_needs_no_annotation(tmp_path: Path) -> None:
    policies = _loaded(tmp_path, mesh="PERMISSIVE")
    _write(tmp_path, mesh="PERMISSIVE", workload="\n  mtls: STRICT")
    assert policies.reload_if_changed() is not None and policies.status.healthy
    _write(tmp_path, mesh="PERMISSIVE", workload="\n  mtls: STRICT", port=", mtls: STRICT")
    assert policies.reload_if_changed() is not None and policies.status.healthy
