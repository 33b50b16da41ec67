"""Istio-style path templates (the grammar of Envoy's uri_template, examples from Istio's
AuthorizationPolicy reference) and per-namespace / per-workload / per-port mTLS modes."""

from __future__ import annotations

import pytest
from meshwarden.engine import check_documents, parse_text
from meshwarden.engine._path_templates import PathTemplate
from meshwarden.xds import TranslationContext, workload_resources
from meshwarden.xds._snapshot import LISTENER

from .conftest import mesh_from


@pytest.mark.parametrize(
    ("template", "path", "matched"),
    [
        ("/foo/{*}", "/foo/bar", True),
        ("/foo/{*}", "/foo/bar/baz", False),
        ("/foo/{*}/bar/{**}", "/foo/buzz/bar/", True),
        ("/foo/{*}/bar/{**}", "/foo/buzz/bar/baz", True),
        ("/foo/{**}/", "/foo/bar/", True),
        ("/foo/{**}/", "/foo//", True),
        ("/foo/{**}/", "/foo/bar", False),
        ("/{**}", "/", True),
        ("/a/{*}", "/a/x=y", False),  # '=' is not a template path character (Envoy's class)
    ],
)
def test_templates_match_as_istio_documents_them(template: str, path: str, matched: bool) -> None:
    assert PathTemplate.parse(template).matches(path) is matched


@pytest.mark.parametrize(
    "template",
    [
        "/*/baz/{*}",
        "/**/baz/{*}",
        "/{**}/foo/{*}",
        "/foo/{*}.txt",
        "/foo/{**}/{**}",
        "x/{*}",
        "/a//{*}",
        "/a/{x}/{*}",
    ],
)
def test_templates_istio_calls_invalid_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="template"):
        PathTemplate.parse(template)


MESH = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {name: m}
spec: {trustDomain: example.org, mtls: STRICT, namespaces: {legacy: {mtls: PERMISSIVE}}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec:
  addresses: [127.0.0.3]
  ports:
  - {name: http, port: 8080, protocol: http}
  - {name: metrics, port: 9090, protocol: http, mtls: PERMISSIVE}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: old-1, namespace: legacy}
spec:
  addresses: [127.0.0.4]
  ports: [{name: http, port: 8080, protocol: http}]
"""


def _chains(text: str, ref: str) -> dict[str, list[str]]:
    mesh = mesh_from(text)
    listeners = workload_resources(mesh, ref, TranslationContext())[LISTENER]
    return {
        lst["name"]: [c["name"] for c in lst["filterChains"]]
        for lst in listeners
        if lst["name"].startswith("in:")
    }


def test_only_permissive_ports_get_a_plaintext_filter_chain() -> None:
    assert _chains(MESH, "shop/api-1") == {"in:8080": ["mtls"], "in:9090": ["mtls", "plaintext"]}
    assert _chains(MESH, "legacy/old-1") == {"in:8080": ["mtls", "plaintext"]}


def test_explain_names_the_setting_that_made_a_port_strict() -> None:
    mesh = mesh_from(MESH)
    plan = mesh.plan("shop/api-1")
    assert plan.mtls(9090).origin == "port 9090 of Workload shop/api-1"
    assert not plan.mtls(9090).strict and plan.mtls(8080).strict
    assert mesh.plan("legacy/old-1").mtls(8080).origin == "Mesh namespaces.legacy"


def test_ip_rules_on_a_permissive_workload_are_not_reported_as_never_matching() -> None:
    policy = """
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: scrape, namespace: shop}
spec:
  rules: [{from: [{ipBlocks: [10.0.0.0/8]}], to: [{ports: [9090]}]}]
"""
    documents, problems = parse_text(MESH + policy, "t.yaml")
    assert not problems
    _, found = check_documents(documents)
    assert not [d for d in found if "never match" in d.message], [str(d) for d in found]
