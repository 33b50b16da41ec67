"""One test per rule of the spec's semantics (shared/spec/policy-language.md, 1-9)."""

import pytest

from .conftest import mesh_from, verdict

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
OPS = "spiffe://example.org/ns/ops/sa/ops-1"


def policy(name: str, body: str, namespace: str = "shop") -> str:
    return (
        "---\napiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n{body}"
    )


ALLOW_FRONTEND = policy(
    "allow-frontend",
    "spec:\n  selector: {matchLabels: {app: backend}}\n  rules:\n"
    "  - from: [{workloads: {matchLabels: {app: frontend}}}]\n",
)


def test_strict_mtls_refuses_plaintext_peers_before_any_policy(shop_workloads):
    mesh = mesh_from(shop_workloads.replace("mtls: PERMISSIVE", "mtls: STRICT"))
    assert verdict(mesh, "shop/backend-1", 8080, source_ip="127.0.0.9") == (
        "DENY",
        "mtls:required",
        None,
    )


def test_token_from_unconfigured_issuer_is_rejected_but_no_token_is_not(shop_workloads):
    issuer = (
        "---\napiVersion: meshwarden.io/v1alpha1\nkind: JwtIssuer\n"
        "metadata: {name: idp, namespace: shop}\n"
        "spec: {issuer: https://idp.example.com, audiences: [backend], "
        'jwks: \'{"keys": [{"kty": "EC"}]}\'}\n'
    )
    mesh = mesh_from(shop_workloads + issuer)
    bad = {"iss": "https://evil.example.com", "aud": "backend"}
    assert verdict(mesh, "shop/backend-1", 8080, identity=FRONTEND, jwt_claims=bad)[:2] == (
        "DENY",
        "jwt:invalid",
    )
    wrong_aud = {"iss": "https://idp.example.com", "aud": "other"}
    assert verdict(mesh, "shop/backend-1", 8080, identity=FRONTEND, jwt_claims=wrong_aud)[1] == (
        "jwt:invalid"
    )
    assert verdict(mesh, "shop/backend-1", 8080, identity=FRONTEND)[1] == "default:allow"


def test_deny_is_checked_before_allow(shop_workloads):
    deny = policy("deny-all", "spec:\n  action: DENY\n  rules: [{}]\n")
    mesh = mesh_from(shop_workloads + ALLOW_FRONTEND + deny)
    assert verdict(mesh, "shop/backend-1", 8080, identity=FRONTEND) == ("DENY", "shop/deny-all", 0)


def test_audit_records_a_match_without_changing_the_outcome(shop_workloads):
    audit = policy("audit-all", "spec:\n  action: AUDIT\n  rules: [{}]\n")
    mesh = mesh_from(shop_workloads + audit)
    from meshwarden.engine import Request, decide

    decision = decide(
        mesh.plan("shop/backend-1"), Request.build("shop/backend-1", 8080, identity=OPS)
    )
    assert decision.allowed and decision.policy == "default:allow"
    assert [(o.policy, o.rule) for o in decision.audit] == [("shop/audit-all", 0)]


def test_allow_policies_selecting_a_workload_deny_what_they_do_not_match(shop_workloads):
    mesh = mesh_from(shop_workloads + ALLOW_FRONTEND)
    assert verdict(mesh, "shop/backend-1", 8080, identity=FRONTEND)[:2] == (
        "ALLOW",
        "shop/allow-frontend",
    )
    assert verdict(mesh, "shop/backend-1", 8080, identity=OPS) == ("DENY", "default:deny", None)
    # a workload no ALLOW policy selects falls back to the Mesh default (allow)
    assert verdict(mesh, "shop/frontend-1", 8080, identity=OPS)[1] == "default:allow"


@pytest.mark.parametrize("default", ["allow", "deny"])
def test_mesh_default_policy_decides_unselected_workloads(shop_workloads, default):
    text = shop_workloads.replace("mtls: PERMISSIVE", f"mtls: PERMISSIVE, defaultPolicy: {default}")
    result = verdict(mesh_from(text), "shop/backend-1", 8080, identity=OPS)
    assert result == (default.upper(), f"default:{default}", None)


def test_dry_run_is_reported_and_never_changes_the_outcome(shop_workloads):
    dry = policy("try-deny", "spec:\n  action: DENY\n  mode: dry-run\n  rules: [{}]\n")
    mesh = mesh_from(shop_workloads + ALLOW_FRONTEND + dry)
    from meshwarden.engine import Request, decide

    decision = decide(
        mesh.plan("shop/backend-1"), Request.build("shop/backend-1", 8080, identity=FRONTEND)
    )
    assert decision.allowed
    assert [(o.policy, o.decision) for o in decision.dry_run] == [("shop/try-deny", "DENY")]


def test_ip_rules_never_match_a_peer_with_an_identity(shop_workloads):
    deny_ip = policy(
        "deny-ip", "spec:\n  action: DENY\n  rules:\n  - from: [{ipBlocks: [127.0.0.0/8]}]\n"
    )
    mesh = mesh_from(shop_workloads + deny_ip)
    assert verdict(mesh, "shop/backend-1", 8080, identity=FRONTEND, source_ip="127.0.0.2")[0] == (
        "ALLOW"
    )
    assert verdict(mesh, "shop/backend-1", 8080, source_ip="127.0.0.2")[:2] == (
        "DENY",
        "shop/deny-ip",
    )


def test_identity_rules_never_match_a_plaintext_peer_even_negated(shop_workloads):
    deny = policy(
        "deny-not-frontend",
        f"spec:\n  action: DENY\n  rules:\n  - from: [{{notIdentities: ['{FRONTEND}']}}]\n",
    )
    mesh = mesh_from(shop_workloads + deny)
    assert verdict(mesh, "shop/backend-1", 8080, source_ip="127.0.0.9")[0] == "ALLOW"
    assert verdict(mesh, "shop/backend-1", 8080, identity=OPS)[1] == "shop/deny-not-frontend"


def test_jwt_source_matches_only_a_verified_token_meeting_every_constraint(shop_workloads):
    issuer = (
        "---\napiVersion: meshwarden.io/v1alpha1\nkind: JwtIssuer\n"
        "metadata: {name: idp, namespace: shop}\n"
        'spec: {issuer: https://idp.example.com, jwks: \'{"keys": [{"kty": "EC"}]}\'}\n'
    )
    allow = policy(
        "admins",
        "spec:\n  selector: {matchLabels: {app: backend}}\n  rules:\n"
        "  - from: [{jwt: {issuers: [https://idp.example.com], "
        "claims: {groups: [admin], realm.role: [ops]}}}]\n"
        "    to: [{ports: [8080]}]\n",
    )
    mesh = mesh_from(shop_workloads + issuer + allow)
    good = {"iss": "https://idp.example.com", "groups": ["dev", "admin"], "realm": {"role": "ops"}}
    assert verdict(mesh, "shop/backend-1", 8080, identity=OPS, jwt_claims=good)[0] == "ALLOW"
    partial = {"iss": "https://idp.example.com", "groups": ["admin"]}
    assert verdict(mesh, "shop/backend-1", 8080, identity=OPS, jwt_claims=partial)[0] == "DENY"
    assert verdict(mesh, "shop/backend-1", 8080, identity=OPS)[0] == "DENY"


def test_http_only_fields_on_a_tcp_port_are_a_load_error(shop_workloads):
    from meshwarden.engine import check_documents, parse_text

    bad = policy(
        "paths-everywhere",
        "spec:\n  selector: {matchLabels: {app: backend}}\n  rules:\n  - to: [{paths: [/api/*]}]\n",
    )
    text = shop_workloads + bad
    documents, _ = parse_text(text, "p.yaml")
    compiled, found = check_documents(documents)
    assert compiled is None
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "paths: [/api/*]" in t)
    column = text.splitlines()[line - 1].index("paths") + 1
    assert [(d.location.line, d.location.column) for d in found] == [(line, column)]
    assert "tcp port 9000" in found[0].message


def test_every_decision_names_policy_and_rule(shop_workloads):
    second = policy(
        "allow-ops",
        "spec:\n  selector: {matchLabels: {app: backend}}\n  rules:\n"
        "  - from: [{namespaces: [nope]}]\n  - from: [{namespaces: [ops]}]\n",
    )
    mesh = mesh_from(shop_workloads + ALLOW_FRONTEND + second)
    assert verdict(mesh, "shop/backend-1", 8080, identity=OPS) == ("ALLOW", "shop/allow-ops", 1)


def test_root_namespace_policy_applies_to_every_namespace(shop_workloads):
    deny = policy(
        "no-admin",
        "spec:\n  action: DENY\n  rules:\n  - to: [{ports: [8080], paths: [/admin/*]}]\n",
        namespace="meshwarden-system",
    )
    mesh = mesh_from(shop_workloads + deny)
    assert verdict(
        mesh, "shop/backend-1", 8080, identity=OPS, method="GET", path="/x/../admin/%61"
    )[:2] == ("DENY", "meshwarden-system/no-admin")


def test_jwt_issuer_header_settings_are_kept_as_written():
    from meshwarden.engine import parse_text

    documents, problems = parse_text(
        "apiVersion: meshwarden.io/v1alpha1\nkind: JwtIssuer\nmetadata: {name: idp}\n"
        "spec: {issuer: https://idp, jwksUri: https://idp/jwks, "
        "fromHeaders: [{name: x-token, prefix: 'Token '}]}\n"
    )
    assert not problems
    header = documents[0].spec.from_headers[0]
    assert (header.name, header.prefix) == ("x-token", "Token ")
    default = parse_text(
        "apiVersion: meshwarden.io/v1alpha1\nkind: JwtIssuer\nmetadata: {name: idp}\n"
        "spec: {issuer: https://idp, jwksUri: https://idp/jwks}\n"
    )[0][0].spec.from_headers[0]
    assert (default.name, default.prefix) == ("authorization", "Bearer ")


def test_a_jwt_svid_of_the_configured_trust_domain_is_accepted_without_iss(shop_workloads):
    issuer = (
        "---\napiVersion: meshwarden.io/v1alpha1\nkind: JwtIssuer\n"
        "metadata: {name: mesh-svids, namespace: shop}\n"
        "spec: {issuer: spiffe-jwt, spiffeTrustDomain: example.org, audiences: [backend]}\n"
    )
    allow = policy(
        "svid-callers",
        "spec:\n  selector: {matchLabels: {app: backend}}\n  rules:\n"
        f"  - from: [{{jwt: {{subjects: ['{OPS}']}}}}]\n"
        "    to: [{ports: [8080]}]\n",
    )
    mesh = mesh_from(shop_workloads + issuer + allow)
    svid = {"sub": OPS, "aud": ["backend"], "exp": 9999999999}
    assert verdict(mesh, "shop/backend-1", 8080, identity=OPS, jwt_claims=svid)[:2] == (
        "ALLOW",
        "shop/svid-callers",
    )
    other_domain = dict(svid, sub="spiffe://other.org/ns/ops/sa/ops-1")
    assert verdict(mesh, "shop/backend-1", 8080, identity=OPS, jwt_claims=other_domain)[1] == (
        "jwt:invalid"
    )
