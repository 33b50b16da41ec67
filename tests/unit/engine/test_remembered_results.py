"""The rule index remembers what it found per (peer, port, method, protocol) and, where only the
path and host are left to check, per path and host: a remembered answer must always be the
answer a fresh snapshot gives, and attacker-chosen paths must not grow memory without bound."""

from __future__ import annotations

import itertools

from meshwarden.engine import Request, decide
from meshwarden.engine._plan import RESULT_LIMIT

from .conftest import mesh_from

POLICIES = """
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{workloads: {matchLabels: {app: frontend}}}]
    to: [{ports: [8080], paths: ["/api/*"], methods: [GET]}]
  - from: [{workloads: {matchLabels: {app: frontend}}}]
    to: [{ports: [8080], hosts: ["shop.example"]}]
  - from: [{namespaces: [ops]}]
    to: [{ports: [8080]}]
    when: [{key: "request.headers[x-ticket]", values: ["T-*"]}]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to: [{ports: [8080], paths: ["/api/admin*"]}]
    when: [{key: "request.headers[x-role]", notValues: [root]}]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: watch, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: AUDIT
  rules:
  - to: [{ports: [8080], paths: ["/api/orders*"]}]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: trial, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  mode: dry-run
  rules:
  - to: [{ports: [8080], paths: ["/api/orders/42"], hosts: ["internal.example"]}]
"""

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
OPS = "spiffe://example.org/ns/ops/sa/default"


def _requests() -> list[Request]:
    paths = ["/api/orders", "/api/orders/42", "/api/admin", "/api/adminx", "/other", "/"]
    hosts = ["shop.example", "internal.example", "other.example"]
    headers = [{}, {"x-role": "root"}, {"x-ticket": "T-1"}, {"x-ticket": "no"}]
    return [
        Request.build(
            "shop/backend-1",
            8080,
            identity=peer,
            method=method,
            path=path,
            host=host,
            headers=header,
        )
        for peer, method, path, host, header in itertools.product(
            [FRONTEND, OPS], ["GET"], paths, hosts, headers
        )
    ]


def _outcome(decision) -> tuple:
    return (
        decision.verdict,
        decision.policy,
        decision.rule,
        tuple(str(o.to_json()) for o in decision.dry_run),
        tuple((o.policy, o.rule) for o in decision.audit),
    )


def test_remembered_answers_equal_a_fresh_snapshots_whatever_the_order(shop_workloads):
    warm = mesh_from(shop_workloads + POLICIES)
    requests = _requests()
    # the warm snapshot decides every request three times, in three orders, so that most
    # answers come from what an earlier, different request left in the index
    expected = {}
    for req in requests:
        fresh = mesh_from(shop_workloads + POLICIES)  # nothing remembered
        expected[id(req)] = _outcome(decide(fresh.plan(req.destination), req))
    orders = [requests, requests[::-1], requests[1::2] + requests[::2]]
    for order in orders:
        for req in order:
            assert _outcome(decide(warm.plan(req.destination), req)) == expected[id(req)], req


def test_the_answers_the_policies_give_on_the_same_peer_and_port(shop_workloads):
    mesh = mesh_from(shop_workloads + POLICIES)
    plan = mesh.plan("shop/backend-1")

    def verdict(**kw):
        d = decide(plan, Request.build("shop/backend-1", 8080, identity=FRONTEND, **kw))
        return d.verdict, d.policy, d.rule, [(o.policy, o.rule) for o in d.audit]

    orders = dict(method="GET", path="/api/orders", host="other.example")
    assert verdict(**orders) == ("ALLOW", "shop/api", 0, [("shop/watch", 0)])
    assert verdict(method="GET", path="/api/admin", host="other.example") == (
        "DENY",
        "shop/no-admin",
        0,
        [],
    )
    assert verdict(
        method="GET", path="/api/admin", host="other.example", headers={"x-role": "root"}
    ) == ("ALLOW", "shop/api", 0, [])
    assert verdict(method="POST", path="/x", host="shop.example") == ("ALLOW", "shop/api", 1, [])
    assert verdict(method="POST", path="/x", host="other.example")[:2] == ("DENY", "default:deny")
    dry = decide(
        plan,
        Request.build(
            "shop/backend-1",
            8080,
            identity=FRONTEND,
            method="GET",
            path="/api/orders/42",
            host="internal.example",
        ),
    )
    assert [(o.policy, o.rule) for o in dry.dry_run] == [("shop/trial", 0)]


def test_paths_an_attacker_chooses_do_not_grow_the_index_without_bound(shop_workloads):
    mesh = mesh_from(shop_workloads + POLICIES)
    plan = mesh.plan("shop/backend-1")
    for n in range(RESULT_LIMIT + 500):
        path = f"/api/x{n}" + ("/long" * 60 if n % 7 == 0 else "")
        d = decide(
            plan,
            Request.build(
                "shop/backend-1",
                8080,
                identity=FRONTEND,
                method="GET",
                path=path,
                host="other.example",
            ),
        )
        assert d.allowed and d.rule == 0
    for index in (plan.deny, plan.allow, plan.audit, plan.dry_run_index):
        remembered = sum(len(c.results) for c in index._memo.values())
        assert remembered <= RESULT_LIMIT
