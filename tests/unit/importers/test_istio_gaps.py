"""Istio details the first import left out, each decided as Istio documents it: a root
namespace other than istio-system (meshConfig.rootNamespace), suffix principals against pods
given identities of their own, and workload- and port-level mTLS loosening at reload."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from meshwarden.cli import main

from . import test_istio_import as istio_import
from .test_istio_import import CLUSTER, explain, sa

DENY_DEV = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-dev, namespace: {namespace}}}
spec: {{action: DENY, rules: [{{from: [{{source: {{namespaces: ["dev"]}}}}]}}]}}
"""
FROM_DEV = {"from": sa("dev", "curl"), "method": "GET", "path": "/"}


imported = istio_import.imported  # the fixture, with flags and another cluster


def test_a_custom_istio_root_namespace_applies_mesh_wide(imported, capsys) -> None:
    """Istio: "the root namespace ... is defined by meshConfig.rootNamespace"; a policy there
    applies to every workload of the mesh, a policy in istio-system then to istio-system only."""
    policy = DENY_DEV.format(namespace="istio-config")
    out = imported(policy, "--istio-root-namespace", "istio-config")
    assert explain(out, capsys, **FROM_DEV) == ("DENY", "meshwarden-system/deny-dev")
    out = imported(
        DENY_DEV.format(namespace="istio-system"), "--istio-root-namespace", "istio-config"
    )
    assert explain(out, capsys, **FROM_DEV) == ("ALLOW", "default:allow")


def test_the_root_namespace_defaults_to_istio_system(imported, capsys) -> None:
    out = imported(DENY_DEV.format(namespace="istio-config"))
    assert explain(out, capsys, **FROM_DEV) == ("ALLOW", "default:allow")


def test_a_root_namespace_that_is_not_a_namespace_name_is_a_usage_error(tmp_path, capsys) -> None:
    source = tmp_path / "in.json"
    source.write_text(json.dumps(CLUSTER))
    argv = ["import", str(source), "-o", str(tmp_path / "out"), "--istio-root-namespace", "Istio_"]
    assert main(argv) == 2
    assert "--istio-root-namespace 'Istio_'" in capsys.readouterr().err


def _web_pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "foo", "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}],
        },
        "status": {"podIP": ip},
    }


# Two pods of service account foo/web; the first policy tells them apart by address, so the
# import gives each its own identity (.../sa/web/pod/NAME).
WEB_CLUSTER = {
    **CLUSTER,
    "items": [*CLUSTER["items"], _web_pod("web-a", "10.0.0.5"), _web_pod("web-b", "10.0.0.6")],
}
ONLY_WEB_A_TO_SLEEP = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep, namespace: foo}
spec:
  selector: {matchLabels: {app: sleep}}
  rules: [{from: [{source: {ipBlocks: ["10.0.0.5/32"]}}]}]
---
"""


def _httpbin_from(principal: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: httpbin, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  rules: [{{from: [{{source: {{principals: ["{principal}"]}}}}]}}]
"""


@pytest.mark.parametrize("principal", ["*/sa/web", "*/ns/foo/sa/web", "*web"])
def test_a_suffix_principal_matches_every_pod_of_its_service_account(
    imported, capsys, principal
) -> None:
    """Istio: a principal "*suffix" matches every identity ending so; each pod of foo/web
    proves spiffe://cluster.local/ns/foo/sa/web, so both web pods are allowed, split or not."""
    out = imported(ONLY_WEB_A_TO_SLEEP + _httpbin_from(principal), cluster=WEB_CLUSTER)
    assert "pod/web-b" in (out / "foo.yaml").read_text()  # the split happened
    http = {"method": "GET", "path": "/"}
    for pod in ("foo/web-a", "foo/web-b"):
        assert explain(out, capsys, from_workload=pod, **http) == ("ALLOW", "foo/httpbin")
    assert explain(out, capsys, from_workload="foo/sleep", **http) == ("DENY", "default:deny")


def test_a_suffix_principal_that_would_match_a_split_identity_only_is_refused(
    tmp_path, capsys
) -> None:
    """ "*web-b" matches no service-account identity (Istio allows no pod of foo/web), but it
    would match the split identity .../sa/web/pod/web-b: refused at the value, never widened."""
    source = tmp_path / "in"
    source.mkdir()
    (source / "cluster.json").write_text(json.dumps(WEB_CLUSTER))
    policies = source / "istio.yaml"
    policies.write_text(textwrap.dedent(ONLY_WEB_A_TO_SLEEP + _httpbin_from("*web-b")))
    assert main(["import", str(source), "-o", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"{policies}:15:42: error: principal '*web-b' would also match" in out, out
    assert "foo/web-b" in out


def test_a_suffix_not_principal_spares_every_pod_of_its_service_account(imported, capsys) -> None:
    """DENY notPrincipals ["*/sa/web"]: Istio denies every identified peer but foo/web's pods."""
    deny = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-web, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*/sa/web"]}}]}]
"""
    out = imported(ONLY_WEB_A_TO_SLEEP + deny, cluster=WEB_CLUSTER)
    http = {"method": "GET", "path": "/"}
    for pod in ("foo/web-a", "foo/web-b"):
        assert explain(out, capsys, from_workload=pod, **http) == ("ALLOW", "default:allow")
    assert explain(out, capsys, from_workload="foo/sleep", **http) == ("DENY", "foo/only-web")
