"""Monitor mode: `Mesh.spec.defaultMode: dry-run` (mesh-wide or per namespace) lets every
request through and records what the enforced ALLOW/DENY policies would have decided."""

from __future__ import annotations

from meshwarden.engine import Outcome, Request, decide, parse_text

from .conftest import mesh_from

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
OPS = "spiffe://example.org/ns/ops/sa/ops"


def _mesh(mesh_spec: str) -> str:
    return f"""\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{trustDomain: example.org, defaultPolicy: deny, {mesh_spec}}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: frontend-1, namespace: shop, labels: {{app: frontend}}}}
spec: {{serviceAccount: frontend, addresses: [127.0.0.2], ports: [{{port: 8080, protocol: http}}]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: backend-1, namespace: shop, labels: {{app: backend}}}}
spec: {{serviceAccount: backend, addresses: [127.0.0.3], ports: [{{port: 8080, protocol: http}}]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: ops-1, namespace: ops, labels: {{app: ops}}}}
spec: {{serviceAccount: ops, addresses: [127.0.0.5], ports: [{{port: 8080, protocol: http}}]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: backend-access, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  rules: [{{from: [{{identities: ["{FRONTEND}"]}}], to: [{{methods: [GET]}}]}}]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: meshwarden-system}}
spec:
  action: DENY
  rules: [{{to: [{{paths: [/admin/*]}}]}}]
"""


def _decide(text: str, to: str, identity: str, method: str = "GET", path: str = "/"):
    mesh = mesh_from(text)
    request = Request.build(to, 8080, identity=identity, method=method, path=path)
    return decide(mesh.plan(to), request, explain=True)


def test_a_mesh_in_monitor_mode_allows_everything_and_records_would_deny():
    text = _mesh("defaultMode: dry-run")
    refused = _decide(text, "shop/backend-1", OPS, "POST")
    assert (refused.verdict, refused.policy) == ("ALLOW", "default:allow")
    assert "monitor mode" in refused.reason
    assert Outcome("shop/backend-access", "DENY", None) in refused.dry_run
    admin = _decide(text, "shop/backend-1", FRONTEND, "GET", "/admin/x")
    assert admin.verdict == "ALLOW"
    assert Outcome("meshwarden-system/no-admin", "DENY", 0) in admin.dry_run
    unselected = _decide(text, "ops/ops-1", FRONTEND)  # defaultPolicy deny is relaxed too
    assert (unselected.verdict, unselected.policy) == ("ALLOW", "default:allow")
    allowed = _decide(text, "shop/backend-1", FRONTEND)
    assert allowed.verdict == "ALLOW"
    assert Outcome("shop/backend-access", "ALLOW", 0) in allowed.dry_run
    assert {t.mode for t in allowed.trace if t.action != "AUDIT"} == {"dry-run"}


def test_the_same_mesh_enforcing_denies_what_monitor_mode_only_records():
    text = _mesh("defaultMode: enforce")
    assert _decide(text, "shop/backend-1", OPS, "POST").policy == "default:deny"
    assert _decide(text, "shop/backend-1", FRONTEND, "GET", "/admin/x").policy == (
        "meshwarden-system/no-admin"
    )
    assert _decide(text, "ops/ops-1", FRONTEND).verdict == "DENY"


def test_a_namespace_setting_overrides_the_mesh_default_for_its_workloads_only():
    one_enforcing = _mesh("defaultMode: dry-run, namespaces: {ops: {defaultMode: enforce}}")
    assert _decide(one_enforcing, "ops/ops-1", FRONTEND).verdict == "DENY"
    assert _decide(one_enforcing, "shop/backend-1", OPS, "POST").verdict == "ALLOW"
    one_monitored = _mesh("namespaces: {shop: {defaultMode: dry-run}}")
    assert _decide(one_monitored, "shop/backend-1", OPS, "POST").verdict == "ALLOW"
    assert _decide(one_monitored, "ops/ops-1", FRONTEND).verdict == "DENY"


def test_policies_keep_their_own_mode_outside_the_plans():
    mesh = mesh_from(_mesh("defaultMode: dry-run"))
    assert mesh.policies["shop/backend-access"].mode == "enforce"


def test_a_mode_that_is_not_one_is_an_error_at_its_value():
    text = _mesh("defaultMode: monitor")
    line = text.splitlines()[3]
    _, problems = parse_text(text, "mesh.yaml")
    assert [str(p).split(": error: ")[0] for p in problems] == [
        f"mesh.yaml:4:{line.index('monitor') + 1}"
    ]
    assert "'monitor' is not allowed" in str(problems[0])
