"""Property tests of the engine: random policy sets and requests (hypothesis)."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshwarden.engine import (
    CompiledMesh,
    Request,
    check_documents,
    compile_documents,
    decide,
    normalize_path,
    parse_text,
)

TD = "example.org"
NAMESPACES = ["a", "b"]
APPS = ["x", "y"]
WORKLOADS = [(ns, app, i) for ns in NAMESPACES for app in APPS for i in (1, 2)]
IDS = [f"spiffe://{TD}/ns/{ns}/sa/{app}" for ns in NAMESPACES for app in APPS]
ID_PATTERNS = [*IDS, f"spiffe://{TD}/ns/a/*", "*/sa/x", "*", "spiffe://other.org/ns/a/sa/x"]
CIDRS = ["127.0.1.0/28", "127.0.1.4/32", "127.0.2.0/24", "10.0.0.0/8"]
IPS = ["127.0.1.1", "127.0.1.4", "127.0.1.20", "127.0.2.9", "10.1.2.3"]
PATHS = ["/api/*", "/health", "*.js", "/admin/*"]
REQUEST_PATHS = ["/api/items", "/health", "/static/app.js", "/admin/x", "/", "/api//x/../y"]


def workload_docs(mtls: str, default: str) -> list[dict]:
    docs: list[dict] = [
        {
            "kind": "Mesh",
            "metadata": {"name": "m"},
            "spec": {"trustDomain": TD, "mtls": mtls, "defaultPolicy": default},
        },
    ]
    for n, (ns, app, i) in enumerate(WORKLOADS):
        docs.append(
            {
                "kind": "Workload",
                "metadata": {"name": f"{app}-{i}", "namespace": ns, "labels": {"app": app}},
                "spec": {
                    "serviceAccount": app,
                    "addresses": [f"127.0.1.{n + 1}"],
                    "ports": [
                        {"port": 8080, "protocol": "http"},
                        {"port": 8081, "protocol": "http"},
                    ],
                },
            }
        )
    return docs


def subset(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True)


source = st.dictionaries(
    st.sampled_from(
        ["identities", "notIdentities", "namespaces", "workloads", "ipBlocks", "notIpBlocks"]
    ),
    st.none(),
    min_size=1,
    max_size=2,
).flatmap(
    lambda keys: st.fixed_dictionaries(
        {
            k: {
                "identities": subset(ID_PATTERNS),
                "notIdentities": subset(IDS),
                "namespaces": subset(NAMESPACES),
                "workloads": st.builds(
                    lambda a: {"matchLabels": {"app": a}}, st.sampled_from(APPS)
                ),
                "ipBlocks": subset(CIDRS),
                "notIpBlocks": subset(CIDRS),
            }[k]
            for k in keys
        }
    )
)
operation = st.fixed_dictionaries(
    {},
    optional={
        "methods": subset(["GET", "POST"]),
        "notMethods": subset(["DELETE"]),
        "paths": subset(PATHS),
        "notPaths": subset(PATHS),
        "ports": subset(["8080", "8081"]),
    },
)
condition = st.one_of(
    st.fixed_dictionaries(
        {"key": st.just("request.headers[x-tenant]"), "values": subset(["acme", "beta-*"])}
    ),
    st.fixed_dictionaries({"key": st.just("source.ip"), "notValues": subset(CIDRS)}),
    st.fixed_dictionaries({"key": st.just("source.namespace"), "values": subset(NAMESPACES)}),
)
rule = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(source, min_size=1, max_size=2),
        "to": st.lists(operation, min_size=1, max_size=2),
        "when": st.lists(condition, min_size=1, max_size=1),
    },
)
policy_spec = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["ALLOW", "ALLOW", "DENY", "AUDIT"]),
        "rules": st.lists(rule, min_size=1, max_size=3),
    },
    optional={
        "selector": st.builds(lambda a: {"matchLabels": {"app": a}}, st.sampled_from(APPS)),
        "mode": st.sampled_from(["enforce", "dry-run"]),
    },
)
policies = st.lists(
    st.tuples(st.sampled_from([*NAMESPACES, "meshwarden-system"]), policy_spec),
    min_size=1,
    max_size=8,
)
requests = st.builds(
    lambda w, port, ident, ip, method, path, tenant: Request.build(
        f"{w[0]}/{w[1]}-{w[2]}",
        port,
        identity=ident,
        source_ip=ip,
        method=method,
        path=path,
        headers={"x-tenant": tenant} if tenant else None,
    ),
    st.sampled_from(WORKLOADS),
    st.sampled_from([8080, 8081]),
    st.sampled_from([*IDS, None]),
    st.sampled_from(IPS),
    st.sampled_from(["GET", "POST", "DELETE"]),
    st.sampled_from(REQUEST_PATHS),
    st.sampled_from([None, "acme", "beta-1", "gamma"]),
)
meshes = st.tuples(st.sampled_from(["STRICT", "PERMISSIVE"]), st.sampled_from(["allow", "deny"]))


def policy_docs(pols: list[tuple[str, dict]]) -> list[dict]:
    return [
        {
            "kind": "AuthorizationPolicy",
            "metadata": {"name": f"p{i}", "namespace": ns},
            "spec": spec,
        }
        for i, (ns, spec) in enumerate(pols)
    ]


def compile_yaml(docs: list[dict]) -> CompiledMesh:
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    documents, problems = parse_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, [str(d) for d in found]
    return compiled


def reference(mesh: CompiledMesh, req: Request) -> tuple[str, str, int | None, list[str]]:
    """The semantics by brute force: every policy of the plan in order, no index."""
    plan = mesh.plan(req.destination)
    if req.identity is None and plan.mesh.mtls == "STRICT":
        return "DENY", "mtls:required", None, []
    enforced = [p for p in plan.policies if not p.dry_run]
    audited = [p.ref for p in enforced if p.action == "AUDIT" and p.first_match(req)]
    for p in enforced:
        rule = p.first_match(req) if p.action == "DENY" else None
        if rule:
            return "DENY", p.ref, rule.index, audited
    allows = [p for p in enforced if p.action == "ALLOW"]
    for p in allows:
        rule = p.first_match(req)
        if rule:
            return "ALLOW", p.ref, rule.index, audited
    if allows or plan.mesh.default_policy == "deny":
        return "DENY", "default:deny", None, audited
    return "ALLOW", "default:allow", None, audited


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(meshes, policies, st.lists(requests, min_size=4, max_size=12))
def test_indexed_decisions_equal_a_full_scan_of_every_policy(mesh_kind, pols, reqs):
    mesh = compile_yaml(workload_docs(*mesh_kind) + policy_docs(pols))
    for req in reqs:
        decision = decide(mesh.plan(req.destination), req)
        audited = [o.policy for o in decision.audit]
        assert (decision.verdict, decision.policy, decision.rule, audited) == reference(mesh, req)
        explained = decide(mesh.plan(req.destination), req, explain=True)
        assert (explained.verdict, explained.policy, explained.rule) == (
            decision.verdict,
            decision.policy,
            decision.rule,
        )


@SETTINGS
@given(meshes, policies, st.lists(requests, min_size=4, max_size=12))
def test_deny_always_wins(mesh_kind, pols, reqs):
    mesh = compile_yaml(workload_docs(*mesh_kind) + policy_docs(pols))
    for req in reqs:
        plan = mesh.plan(req.destination)
        denying = [
            p for p in plan.policies if p.action == "DENY" and not p.dry_run and p.first_match(req)
        ]
        if denying and not (req.identity is None and plan.mesh.mtls == "STRICT"):
            decision = decide(plan, req)
            assert decision.verdict == "DENY" and decision.policy == denying[0].ref


@SETTINGS
@given(meshes, policies, requests, st.sampled_from(IPS))
def test_an_ip_never_changes_the_decision_for_a_peer_with_an_identity(mesh_kind, pols, req, ip):
    mesh = compile_yaml(workload_docs(*mesh_kind) + policy_docs(pols))
    if req.identity is None:
        return
    other = Request.build(
        req.destination,
        req.port,
        identity=req.identity,
        source_ip=ip,
        method=req.method,
        path=req.path,
        headers=dict(req.headers),
    )
    first, second = (
        decide(mesh.plan(req.destination), req),
        decide(mesh.plan(other.destination), other),
    )
    assert (first.verdict, first.policy, first.rule) == (second.verdict, second.policy, second.rule)


@SETTINGS
@given(meshes, policies, rule, st.lists(requests, min_size=4, max_size=12))
def test_adding_an_allow_rule_never_turns_an_allow_into_a_deny(mesh_kind, pols, extra, reqs):
    enforced_allows = [
        i for i, (_, s) in enumerate(pols) if s["action"] == "ALLOW" and s.get("mode") != "dry-run"
    ]
    allow_index = enforced_allows[0] if enforced_allows else None
    if allow_index is None:
        return
    before = compile_yaml(workload_docs(*mesh_kind) + policy_docs(pols))
    widened = [(ns, dict(spec)) for ns, spec in pols]
    widened[allow_index][1]["rules"] = [*widened[allow_index][1]["rules"], extra]
    after = compile_yaml(workload_docs(*mesh_kind) + policy_docs(widened))
    for req in reqs:
        if decide(before.plan(req.destination), req).allowed:
            assert decide(after.plan(req.destination), req).allowed


@SETTINGS
@given(
    meshes,
    policies,
    st.tuples(st.sampled_from(NAMESPACES), policy_spec),
    st.lists(requests, min_size=4, max_size=12),
)
def test_incremental_recompile_equals_a_full_compile(mesh_kind, pols, change, reqs):
    base = workload_docs(*mesh_kind)
    old = compile_yaml(base + policy_docs(pols))
    changed = list(pols)
    if changed:
        changed[0] = change
    else:
        changed.append(change)
    full = compile_yaml(base + policy_docs(changed))
    key = next(k for k in full.documents if k.kind == "AuthorizationPolicy" and k.name == "p0")
    incremental, affected = old.with_policy_changes(upserts=[full.documents[key]])
    if pols:  # the replaced policy's old namespace may differ: remove its old key
        old_key = next(
            k for k in old.documents if k.kind == "AuthorizationPolicy" and k.name == "p0"
        )
        if old_key != key:
            incremental, more = incremental.with_policy_changes(deletes=[old_key])
            affected |= more
    assert incremental.version == full.version
    for req in reqs:
        a = decide(incremental.plan(req.destination), req)
        b = decide(full.plan(req.destination), req)
        assert (a.verdict, a.policy, a.rule) == (b.verdict, b.policy, b.rule)
        if req.destination not in affected:
            assert incremental.plan(req.destination) is old.plan(req.destination)


ISSUER = "https://idp.example.com"
JWT_ISSUER = {
    "kind": "JwtIssuer",
    "metadata": {"name": "idp", "namespace": "meshwarden-system"},
    "spec": {"issuer": ISSUER, "jwksUri": f"{ISSUER}/jwks.json"},
}
jwt_source = st.fixed_dictionaries(
    {"jwt": st.fixed_dictionaries({"subjects": subset(["alice", "bob"])})},
    optional={"namespaces": subset(NAMESPACES)},
)
peer_rule = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(st.one_of(source, jwt_source), min_size=1, max_size=2),
        "to": st.lists(operation, min_size=1, max_size=2),
        "when": st.lists(condition, min_size=1, max_size=1),
    },
)
peer_policies = st.lists(
    st.tuples(
        st.sampled_from([*NAMESPACES, "meshwarden-system"]),
        policy_spec,
        st.lists(peer_rule, min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=8,
).map(lambda found: [(ns, spec | {"rules": rules}) for ns, spec, rules in found])
variants = st.lists(
    st.tuples(
        st.sampled_from(IPS),
        st.sampled_from(REQUEST_PATHS),
        st.sampled_from([None, "acme", "beta-1"]),
        st.sampled_from([None, "alice", "bob"]),
    ),
    min_size=2,
    max_size=8,
)


def dry_run_reference(mesh: CompiledMesh, req: Request) -> list[tuple[str, str, int | None]]:
    """Each dry-run policy's outcome by brute force: its first matching rule, if any."""
    plan = mesh.plan(req.destination)
    if req.identity is None and plan.mesh.mtls == "STRICT":
        return []
    found = []
    for p in plan.policies:
        rule = p.first_match(req) if p.dry_run else None
        index = rule.index if rule else None
        if p.dry_run and p.action in ("ALLOW", "DENY"):
            other = "DENY" if p.action == "ALLOW" else "ALLOW"
            found.append((p.ref, p.action if rule else other, index))
        elif p.dry_run and rule:
            found.append((p.ref, "AUDIT", index))
    return found


@SETTINGS
@given(meshes, peer_policies, requests, variants)
def test_requests_of_one_peer_port_and_method_decide_like_a_full_scan(mesh_kind, pols, base, vs):
    """The index remembers what the peer, port and method decide of each rule: requests that
    share those but differ in everything else (address, path, headers, JWT) still decide,
    audit and dry-run exactly as a scan of every rule of every policy."""
    mesh = compile_yaml([*workload_docs(*mesh_kind), JWT_ISSUER, *policy_docs(pols)])
    reqs = [
        Request.build(
            base.destination,
            base.port,
            identity=base.identity,
            source_ip=ip,
            method=base.method,
            path=path,
            headers={"x-tenant": t} if t else None,
            jwt_claims={"iss": ISSUER, "sub": sub} if sub else None,
        )
        for ip, path, t, sub in vs
    ]
    for req in [*reqs, *reversed(reqs)]:
        decision = decide(mesh.plan(req.destination), req)
        audited = [o.policy for o in decision.audit]
        assert (decision.verdict, decision.policy, decision.rule, audited) == reference(mesh, req)
        dry_run = [(o.policy, o.decision, o.rule) for o in decision.dry_run]
        assert dry_run == dry_run_reference(mesh, req)


@given(st.text(alphabet="/.%2e5fFa", max_size=24))
def test_path_normalisation_is_idempotent_and_rooted(raw):
    once = normalize_path(raw)
    assert once.startswith("/") and "//" not in once
    assert normalize_path(once) == once


def test_full_compile_and_shared_plans_are_consistent():
    mesh = compile_documents(
        parse_text(
            yaml.safe_dump_all(
                [
                    dict(d, apiVersion="meshwarden.io/v1alpha1")
                    for d in workload_docs("STRICT", "allow")
                ]
            )
        )[0]
    )
    assert sorted(mesh.plans) == sorted(f"{ns}/{app}-{i}" for ns, app, i in WORKLOADS)
