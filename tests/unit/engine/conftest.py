from __future__ import annotations

import textwrap

import pytest
from meshwarden.engine import CompiledMesh, Request, check_documents, decide, parse_text

HEADER = "apiVersion: meshwarden.io/v1alpha1\n"


def mesh_from(text: str) -> CompiledMesh:
    """Compile YAML text that must be valid; fails the test with the diagnostics otherwise."""
    documents, problems = parse_text(textwrap.dedent(text), "test.yaml")
    assert not problems, "\n".join(map(str, problems))
    compiled, found = check_documents(documents)
    errors = [d for d in found if d.severity.value == "error"]
    assert compiled is not None and not errors, "\n".join(map(str, found))
    return compiled


def verdict(mesh: CompiledMesh, dest: str, port: int, **kw: object) -> tuple[str, str, int | None]:
    decision = decide(mesh.plan(dest), Request.build(dest, port, **kw))  # type: ignore[arg-type]
    return decision.verdict, decision.policy, decision.rule


@pytest.fixture
def shop_workloads() -> str:
    return textwrap.dedent(
        """\
        apiVersion: meshwarden.io/v1alpha1
        kind: Mesh
        metadata: {name: mesh}
        spec: {trustDomain: example.org, mtls: PERMISSIVE}
        ---
        apiVersion: meshwarden.io/v1alpha1
        kind: Workload
        metadata: {name: frontend-1, namespace: shop, labels: {app: frontend}}
        spec: {serviceAccount: frontend, addresses: [127.0.0.2]}
        ---
        apiVersion: meshwarden.io/v1alpha1
        kind: Workload
        metadata: {name: backend-1, namespace: shop, labels: {app: backend}}
        spec:
          serviceAccount: backend
          addresses: [127.0.0.3]
          ports: [{port: 8080, protocol: http}, {port: 9000, protocol: tcp}]
        ---
        apiVersion: meshwarden.io/v1alpha1
        kind: Workload
        metadata: {name: ops-1, namespace: ops, labels: {app: ops}}
        spec: {addresses: [127.0.0.5]}
        """
    )
