"""Entering monitor mode on a running control plane is a loosening: refused unless annotated."""

from __future__ import annotations

import io
from pathlib import Path

from meshwarden._policies import Policies

MESH = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh{annotations}}}
spec: {{trustDomain: example.org, defaultPolicy: deny{extra}}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: backend-1, namespace: shop, labels: {{app: backend}}}}
spec: {{addresses: [127.0.0.3], ports: [{{port: 8080, protocol: http}}]}}
"""
ANNOTATED = ', annotations: {"meshwarden.io/allow-loosening": "true"}'


def _write(directory: Path, extra: str = "", annotations: str = "") -> None:
    (directory / "mesh.yaml").write_text(MESH.format(extra=extra, annotations=annotations))


def _loaded(directory: Path) -> Policies:
    policies = Policies(directory, report=io.StringIO(), settle=0)
    assert policies.reload_if_changed() is not None and policies.status.healthy
    return policies


def test_monitor_mode_mesh_wide_or_for_a_namespace_is_refused_unless_annotated(tmp_path):
    _write(tmp_path)
    policies = _loaded(tmp_path)
    spec = MESH.format(extra=", defaultMode: dry-run", annotations="").splitlines()[3]
    for extra, message in [
        (
            ", defaultMode: dry-run",
            f"mesh.yaml:4:{spec.index('dry-run') + 1}: error: defaultMode would loosen",
        ),
        (", namespaces: {shop: {defaultMode: dry-run}}", "namespace shop would loosen"),
    ]:
        _write(tmp_path, extra)
        assert policies.reload_if_changed() is None
        assert message in "\n".join(policies.status.errors)
    _write(tmp_path, ", defaultMode: dry-run", ANNOTATED)
    assert policies.reload_if_changed() is not None and policies.status.healthy


def test_leaving_monitor_mode_needs_no_annotation(tmp_path):
    _write(tmp_path, ", defaultMode: dry-run, namespaces: {shop: {defaultMode: enforce}}")
    policies = _loaded(tmp_path)
    _write(tmp_path)  # the whole mesh enforced again
    assert policies.reload_if_changed() is not None and policies.status.healthy
    _write(tmp_path, ", namespaces: {shop: {defaultMode: enforce}}")
    assert policies.reload_if_changed() is not None and policies.status.healthy
