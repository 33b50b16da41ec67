"""Imported Istio security policies decide as Istio documents them.

Each expected decision is written from Istio's reference (authorization-policy, peer
authentication, request authentication, the TCP and dry-run tasks), never from our output:
the Istio objects are imported with `meshwarden import`, then `meshwarden explain` is asked."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from meshwarden.cli import main

TD = "cluster.local"
CLUSTER = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"serviceAccountName": app, "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": ip},
        }
        for name, ns, app, ip, ports in [
            (
                "httpbin",
                "foo",
                "httpbin",
                "10.0.0.2",
                [
                    {"containerPort": 8000, "name": "http-web"},
                    {"containerPort": 9000, "name": "tcp-echo"},
                ],
            ),
            ("sleep", "foo", "sleep", "10.0.0.3", [{"containerPort": 80, "name": "http"}]),
            ("curl", "dev", "curl", "10.0.1.3", [{"containerPort": 80, "name": "http"}]),
            ("admin", "ops", "admin", "10.0.2.3", [{"containerPort": 80, "name": "http"}]),
        ]
    ],
}
ISSUER = "https://accounts.example.com"
REQUEST_AUTHN = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: idp, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: https://accounts.example.com/jwks.json
"""


def sa(ns: str, account: str) -> str:
    return f"spiffe://{TD}/ns/{ns}/sa/{account}"


@pytest.fixture
def imported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """Import the cluster (CLUSTER unless given) plus `policies` with `flags`; the output."""
    counter = iter(range(100))

    def run(policies: str, *flags: str, cluster: dict[str, Any] = CLUSTER) -> Path:
        n = next(counter)
        source = tmp_path / f"in-{n}"
        source.mkdir()
        (source / "cluster.json").write_text(json.dumps(cluster))
        (source / "istio.yaml").write_text(textwrap.dedent(policies))
        out = tmp_path / f"out-{n}"
        code = main(["import", str(source), "-o", str(out), *flags])
        assert code == 0, capsys.readouterr()
        return out

    return run


def explain(
    out: Path, capsys: pytest.CaptureFixture[str], port: int = 8000, **request: Any
) -> tuple[str, str]:
    argv = ["explain", str(out), "--to", "foo/httpbin", "--port", str(port), "-o", "json"]
    for key, value in request.items():
        if key == "claims":
            argv += ["--jwt-claims", json.dumps(value)]
        elif key == "headers":
            argv += [f"--header={k}={v}" for k, v in value.items()]
        else:
            argv += [f"--{key.replace('_', '-')}", value]
    capsys.readouterr()
    code = main(argv)
    printed = json.loads(capsys.readouterr().out)
    assert code == (0 if printed["decision"] == "ALLOW" else 1)
    return printed["decision"], printed["policy"]


# Istio's reference example: from principal sleep or namespace dev, GET /info* or POST /data,
# with a token from the issuer.
REFERENCE = (
    REQUEST_AUTHN
    + f"""---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: httpbin, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: ALLOW
  rules:
  - from:
    - source: {{principals: ["{TD}/ns/foo/sa/sleep"]}}
    - source: {{namespaces: ["dev"]}}
    to:
    - operation: {{methods: ["GET"], paths: ["/info*"]}}
    - operation: {{methods: ["POST"], paths: ["/data"]}}
    when:
    - key: request.auth.claims[iss]
      values: ["{ISSUER}"]
"""
)
TOKEN = {"iss": ISSUER, "sub": "alice"}


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            {"from": sa("foo", "sleep"), "method": "GET", "path": "/info/x", "claims": TOKEN},
            "ALLOW",
        ),
        ({"from": sa("dev", "curl"), "method": "POST", "path": "/data", "claims": TOKEN}, "ALLOW"),
        ({"from": sa("foo", "sleep"), "method": "GET", "path": "/info/x"}, "DENY"),  # no token
        (
            {"from": sa("foo", "sleep"), "method": "DELETE", "path": "/info", "claims": TOKEN},
            "DENY",
        ),
        ({"from": sa("foo", "sleep"), "method": "POST", "path": "/info", "claims": TOKEN}, "DENY"),
        ({"from": sa("ops", "admin"), "method": "GET", "path": "/info", "claims": TOKEN}, "DENY"),
        # paths are matched after normalisation: /data/../info is /info
        (
            {"from": sa("foo", "sleep"), "method": "GET", "path": "/data/../info", "claims": TOKEN},
            "ALLOW",
        ),
    ],
)
def test_istio_reference_example(imported, capsys, request_, expected) -> None:
    assert explain(imported(REFERENCE), capsys, **request_)[0] == expected


def test_an_allow_policy_with_http_fields_never_matches_a_tcp_port(imported, capsys) -> None:
    out = imported(REFERENCE)  # Istio: the ALLOW rule is dropped for the tcp port 9000
    assert explain(out, capsys, 9000, **{"from": sa("foo", "sleep")}) == ("DENY", "default:deny")


DENY_POST = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["dev"]}}]
    to: [{operation: {methods: ["POST"], ports: ["8000", "9000"]}}]
"""


def test_deny_with_http_fields_denies_all_tcp_on_its_ports(imported, capsys) -> None:
    out = imported(DENY_POST)  # Istio: "all TCP traffic on port 8080 would be denied"
    assert explain(out, capsys, 9000, **{"from": sa("dev", "curl")}) == ("DENY", "foo/deny-post")
    assert explain(out, capsys, 9000, **{"from": sa("foo", "sleep")})[0] == "ALLOW"
    post = {"from": sa("dev", "curl"), "method": "POST", "path": "/"}
    assert explain(out, capsys, **post) == ("DENY", "foo/deny-post")
    assert explain(out, capsys, **{**post, "method": "GET"})[0] == "ALLOW"


def test_deny_is_checked_before_allow(imported, capsys) -> None:
    allow_all = """
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: allow-all, namespace: foo}
    spec: {rules: [{}]}
    """
    out = imported(textwrap.dedent(allow_all) + "---" + DENY_POST)
    post = {"from": sa("dev", "curl"), "method": "POST", "path": "/"}
    assert explain(out, capsys, **post) == ("DENY", "foo/deny-post")
    assert explain(out, capsys, **{**post, "method": "GET"}) == ("ALLOW", "foo/allow-all")


NOT_FORMS = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: not-forms, namespace: foo}}
spec:
  rules:
  - from: [{{source: {{notPrincipals: ["{TD}/ns/ops/sa/admin"]}}}}]
    to: [{{operation: {{notPaths: ["/admin/{{**}}"], notMethods: ["DELETE"], ports: ["8000"]}}}}]
  - from: [{{source: {{ipBlocks: ["10.0.0.0/24"], notIpBlocks: ["10.0.0.3"]}}}}]
    to: [{{operation: {{ports: ["9000"]}}}}]
"""


@pytest.mark.parametrize(
    ("port", "request_", "expected"),
    [
        (8000, {"from": sa("dev", "curl"), "method": "GET", "path": "/x"}, "ALLOW"),
        (8000, {"from": sa("ops", "admin"), "method": "GET", "path": "/x"}, "DENY"),
        (8000, {"from": sa("dev", "curl"), "method": "GET", "path": "/admin/a/b"}, "DENY"),
        (8000, {"from": sa("dev", "curl"), "method": "DELETE", "path": "/x"}, "DENY"),
        # ipBlocks: the pods at those addresses by their identities (httpbin 10.0.0.2 yes,
        # sleep 10.0.0.3 excluded, curl 10.0.1.3 outside), and plaintext peers by address
        (9000, {"from": sa("foo", "httpbin")}, "ALLOW"),
        (9000, {"from": sa("foo", "sleep")}, "DENY"),
        (9000, {"from": sa("dev", "curl")}, "DENY"),
        (9000, {"source_ip": "10.0.0.9"}, "ALLOW"),
        (9000, {"source_ip": "10.0.0.3"}, "DENY"),
    ],
)
def test_not_forms_and_address_blocks(imported, capsys, port, request_, expected) -> None:
    assert explain(imported(NOT_FORMS), capsys, port, **request_)[0] == expected


def test_a_deny_on_not_principals_also_denies_a_plaintext_peer(imported, capsys) -> None:
    policy = f"""
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {{name: only-sleep, namespace: foo}}
    spec:
      action: DENY
      rules: [{{from: [{{source: {{notPrincipals: ["{TD}/ns/foo/sa/sleep"]}}}}]}}]
    """
    out = imported(policy)  # Istio: a plaintext peer has no principal, so notPrincipals matches
    assert explain(out, capsys, **{"source_ip": "10.9.9.9", "method": "GET", "path": "/"})[1] == (
        "foo/only-sleep"
    )
    assert explain(out, capsys, **{"from": sa("foo", "sleep"), "method": "GET", "path": "/"})[
        0
    ] == ("ALLOW")


CONDITIONS = (
    REQUEST_AUTHN
    + """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: conditions, namespace: foo}
spec:
  rules:
  - to: [{operation: {paths: ["/api/{*}/items"], ports: ["8000"]}}]
    when:
    - {key: "request.headers[x-version]", values: ["v1", "beta-*"]}
    - {key: "request.auth.claims[groups]", values: ["admin"]}
    - {key: "request.auth.claims[realm][role]", notValues: ["guest"]}
    - {key: source.namespace, values: ["dev"]}
"""
)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            {
                "path": "/api/v2/items",
                "headers": {"x-version": "v1"},
                "claims": {**TOKEN, "groups": ["dev", "admin"]},
            },
            "ALLOW",
        ),
        (
            {
                "path": "/api/v2/items",
                "headers": {"x-version": "beta-3"},
                "claims": {**TOKEN, "groups": "admin", "realm": {"role": "ops"}},
            },
            "ALLOW",
        ),
        (
            {
                "path": "/api/v2/items",
                "headers": {"x-version": "v1"},
                "claims": {**TOKEN, "groups": ["admin"], "realm": {"role": "guest"}},
            },
            "DENY",
        ),
        ({"path": "/api/v2/items", "claims": {**TOKEN, "groups": ["admin"]}}, "DENY"),
        (
            {
                "path": "/api/v2/x/items",
                "headers": {"x-version": "v1"},
                "claims": {**TOKEN, "groups": ["admin"]},
            },
            "DENY",
        ),
    ],
)
def test_header_and_nested_list_claim_conditions(imported, capsys, request_, expected) -> None:
    request_ = {"from": sa("dev", "curl"), "method": "GET", **request_}
    assert explain(imported(CONDITIONS), capsys, **request_)[0] == expected


def test_peer_authentication_modes_down_to_a_port(imported, capsys) -> None:
    policies = """
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: default, namespace: istio-system}
    spec: {mtls: {mode: STRICT}}
    ---
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: echo, namespace: foo}
    spec:
      selector: {matchLabels: {app: httpbin}}
      portLevelMtls: {9000: {mode: PERMISSIVE}}
    """
    out = imported(policies)
    assert explain(out, capsys, 9000, source_ip="10.9.9.9") == ("ALLOW", "default:allow")
    plain_http = {"source_ip": "10.9.9.9", "method": "GET", "path": "/"}
    assert explain(out, capsys, **plain_http) == ("DENY", "mtls:required")


def test_without_peer_authentication_istio_accepts_plaintext(imported, capsys) -> None:
    out = imported(DENY_POST)
    assert explain(out, capsys, source_ip="10.9.9.9", method="GET", path="/")[0] == "ALLOW"


def test_a_token_of_another_issuer_is_rejected_before_policies(imported, capsys) -> None:
    out = imported(REFERENCE)
    other = {"iss": "https://other.example.com", "sub": "mallory"}
    request_ = {"from": sa("foo", "sleep"), "method": "GET", "path": "/info", "claims": other}
    assert explain(out, capsys, **request_) == ("DENY", "jwt:invalid")


def test_the_dry_run_annotation_makes_a_dry_run_policy(imported, capsys) -> None:
    policy = """
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: dry, namespace: foo, annotations: {"istio.io/dry-run": "true"}}
    spec: {action: DENY, rules: [{to: [{operation: {paths: ["/headers"], ports: ["8000"]}}]}]}
    """
    out = imported(policy)
    request_ = {"from": sa("dev", "curl"), "method": "GET", "path": "/headers"}
    assert explain(out, capsys, **request_) == ("ALLOW", "default:allow")


def test_root_namespace_policies_apply_in_every_namespace(imported, capsys) -> None:
    policy = """
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-dev, namespace: istio-system}
    spec: {action: DENY, rules: [{from: [{source: {namespaces: ["dev"]}}]}]}
    """
    out = imported(policy)
    assert explain(out, capsys, **{"from": sa("dev", "curl"), "method": "GET", "path": "/"}) == (
        "DENY",
        "meshwarden-system/deny-dev",
    )


def _errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> list[str]:
    source = tmp_path / "in"
    source.mkdir(exist_ok=True)
    (source / "cluster.json").write_text(json.dumps(CLUSTER))
    (source / "istio.yaml").write_text(textwrap.dedent(text))
    capsys.readouterr()
    assert main(["import", str(source), "-o", str(tmp_path / "out")]) == 1
    return [
        line.split("istio.yaml:", 1)[1]
        for line in capsys.readouterr().out.splitlines()
        if "istio.yaml:" in line
    ]


AP = (
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
    "metadata: {name: p, namespace: foo}\n"
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("spec: {action: CUSTOM, provider: {name: ext}}\n", "4:16: error: CUSTOM delegates"),
        (
            "spec: {targetRefs: [{kind: Gateway, name: gw}]}\n",
            "4:20: error: spec.targetRefs attaches",
        ),
        (
            "spec: {rules: [{from: [{source: {remoteIpBlocks: [1.2.3.4]}}]}]}\n",
            "4:50: error: remoteIpBlocks come from X-Forwarded-For",
        ),
        (
            "spec: {rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}\n",
            "4:15: error: these rules need a verified token, but no RequestAuthentication",
        ),
        (
            "spec: {rules: [{when: [{key: destination.ip, values: [1.2.3.4]}]}]}\n",
            "4:30: error: condition key 'destination.ip' is not supported",
        ),
        (
            "spec: {rules: [{to: [{operation: {pathz: [/x]}}]}]}\n",
            "4:35: error: spec.rules[0].to[0].operation.pathz is not supported here",
        ),
        (
            "spec: {rules: [{from: [{source: {principals: [admin]}}]}]}\n",
            "4:47: error: principals value 'admin' has no SPIFFE spelling",
        ),
        (
            "spec: {rules: [{from: [{source: {principals: [a/ns/b/sa/c], ipBlocks: [1.2.3.4]}}]}]}"
            "\n",
            "4:71: error: ipBlocks with principals",
        ),
    ],
)
def test_what_cannot_be_kept_is_an_error_at_its_position(tmp_path, capsys, spec, expected) -> None:
    found = _errors(tmp_path, capsys, AP + spec)
    assert any(line.startswith(expected) for line in found), found


def test_peer_authentication_disable_is_refused(tmp_path, capsys) -> None:
    text = """\
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: p, namespace: foo}
    spec: {mtls: {mode: DISABLE}}
    """
    assert _errors(tmp_path, capsys, text)[0].startswith("4:21: error: DISABLE turns mTLS off")
