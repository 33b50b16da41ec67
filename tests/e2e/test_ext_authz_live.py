"""`meshwarden up` with `enforcement: ext-authz`: the sidecars ask the control plane over their
mTLS connection to it (the production path), which decides for the workload the connection
proves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._live import MeshwardenUp, exchange, free_port, request, sample_app

DOCUMENTS = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{trustDomain: live.test, mtls: PERMISSIVE, defaultPolicy: deny, enforcement: ext-authz}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: frontend-1, namespace: shop, labels: {{app: frontend}}}}
spec:
  addresses: [{net}.2]
  upstreams: [{{service: shop/backend, port: 8080, localPort: {front_out}}}]
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: ops-1, namespace: ops, labels: {{app: ops}}}}
spec:
  addresses: [{net}.5]
  upstreams: [{{service: shop/backend, port: 8080, localPort: {ops_out}}}]
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: backend-1, namespace: shop, labels: {{app: backend}}}}
spec:
  addresses: [{net}.3]
  ports: [{{port: 8080, targetPort: {app_port}, protocol: http}}]
---
apiVersion: meshwarden.io/v1alpha1
kind: Service
metadata: {{name: backend, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  ports: [{{port: 8080, protocol: http}}]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: backend-access, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  rules:
  - from: [{{workloads: {{matchLabels: {{app: frontend}}}}}}]
    to: [{{paths: [/api/*]}}]
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int | str]]:
    root = tmp_path_factory.mktemp("ext-authz-live")
    values: dict[str, int | str] = {
        "net": f"127.78.{os.getpid() % 250}", "front_out": free_port(), "ops_out": free_port(),
        "app_port": free_port(),
    }  # fmt: skip
    policies = root / "policies"
    policies.mkdir()
    (policies / "mesh.yaml").write_text(DOCUMENTS.format(**values))
    up = MeshwardenUp(policies, Path(root / "data"))
    with sample_app(int(values["app_port"])):
        up.start()
        try:
            yield values
        finally:
            assert up.stop() == 0, up.log.read_text()[-3000:]


def test_sidecars_in_ext_authz_mode_enforce_the_engines_verdicts_over_mtls(
    live: dict[str, int | str],
) -> None:
    frontend, ops = int(live["front_out"]), int(live["ops_out"])
    assert request("127.0.0.1", frontend, "GET", "/api/items") == 200
    status, body = exchange("127.0.0.1", frontend, "GET", "/admin/x")
    assert (status, body) == (403, "ext_authz: access denied by default:deny")
    assert request("127.0.0.1", ops, "GET", "/api/items") == 403
    plaintext = request(f"{live['net']}.3", 8080, "GET", "/api/items", source=f"{live['net']}.9")
    assert plaintext == 403
