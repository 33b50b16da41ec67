"""Loosening a namespace's mTLS mode on a running control plane is refused unless annotated."""

from __future__ import annotations

from pathlib import Path

from meshwarden._policies import Policies

from .test_monitor_mode_reload import ANNOTATED, _loaded, _write


def _errors(policies: Policies) -> str:
    return "\n".join(policies.status.errors)


def test_a_namespace_made_permissive_is_refused_unless_annotated(tmp_path: Path) -> None:
    _write(tmp_path, ", mtls: STRICT")
    policies = _loaded(tmp_path)
    _write(tmp_path, ", mtls: STRICT, namespaces: {shop: {mtls: PERMISSIVE}}")
    assert policies.reload_if_changed() is None
    assert "namespace shop would loosen mtls from STRICT to PERMISSIVE" in _errors(policies)
    _write(tmp_path, ", mtls: STRICT, namespaces: {shop: {mtls: PERMISSIVE}}", ANNOTATED)
    assert policies.reload_if_changed() is not None and policies.status.healthy


def test_dropping_a_strict_override_of_a_permissive_mesh_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, ", mtls: PERMISSIVE, namespaces: {shop: {mtls: STRICT}}")
    policies = _loaded(tmp_path)
    _write(tmp_path, ", mtls: PERMISSIVE")
    assert policies.reload_if_changed() is None
    assert "namespace shop would loosen mtls" in _errors(policies)


def test_tightening_a_namespace_needs_no_annotation(tmp_path: Path) -> None:
    _write(tmp_path, ", mtls: PERMISSIVE")
    policies = _loaded(tmp_path)
    _write(tmp_path, ", mtls: PERMISSIVE, namespaces: {shop: {mtls: STRICT}}")
    assert policies.reload_if_changed() is not None and policies.status.healthy
