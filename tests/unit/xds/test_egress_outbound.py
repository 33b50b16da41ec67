"""The source sidecar's outbound side follows its egress policies: an upstream's cluster keeps
only the endpoints egress allows and verifies only their identities; an upstream egress denies
entirely is closed by an RBAC filter named after the deciding rule or default."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from meshwarden.engine import check_documents, parse_text
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER
from meshwarden.xds._translate import workload_resources

MESH = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: example.org}
---
apiVersion: meshwarden.io/v1alpha1
kind: Service
metadata: {name: db, namespace: shop}
spec: {selector: {matchLabels: {app: db}}, ports: [{port: 5432}]}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: db-1, namespace: shop, labels: {app: db, tier: primary}}
spec: {serviceAccount: db-primary, addresses: [127.0.0.11], ports: [{port: 5432}]}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: db-2, namespace: shop, labels: {app: db, tier: replica}}
spec: {serviceAccount: db-replica, addresses: [127.0.0.12], ports: [{port: 5432}]}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {upstreams: [{service: shop/db, port: 5432, localPort: 15432}]}
"""


def egress(action: str, destination: str) -> str:
    return textwrap.dedent(f"""\
        ---
        apiVersion: meshwarden.io/v1alpha1
        kind: AuthorizationPolicy
        metadata: {{name: web-{action.lower()}, namespace: shop}}
        spec:
          direction: egress
          action: {action}
          selector: {{matchLabels: {{app: web}}}}
          rules: [{{to: [{destination}]}}]
        """)


def outbound(text: str) -> tuple[list[Any], list[str], list[str]]:
    """(filter names and RBAC action names of web-1's outbound listener, endpoint addresses,
    the identities its upstream TLS accepts)."""
    documents, problems = parse_text(text)
    compiled, found = check_documents(documents)
    assert compiled is not None and not problems, [*problems, *found]
    resources = workload_resources(compiled, "shop/web-1", TranslationContext())
    (listener,) = [r for r in resources[LISTENER] if r["name"] == "out:15432"]
    filters = []
    for f in listener["filterChains"][0]["filters"]:
        matchers = f["typedConfig"].get("matcher", {}).get("matcherList", {}).get("matchers", [])
        names = [m["onMatch"]["action"]["typedConfig"]["name"] for m in matchers]
        filters.append((f["name"], names))
    (load,) = resources[ENDPOINT]
    addresses = [
        e["endpoint"]["address"]["socketAddress"]["address"]
        for group in load["endpoints"]
        for e in group["lbEndpoints"]
    ]
    (cluster,) = [c for c in resources[CLUSTER] if c["name"] == "out:shop/db:5432"]
    context = cluster["transportSocket"]["typedConfig"]["commonTlsContext"]
    validation = json.dumps(context)
    accepted = [f'"spiffe://example.org/ns/shop/sa/{i}"' for i in ("db-primary", "db-replica")]
    sans = [i.rsplit("/", 1)[-1].strip('"') for i in accepted if i in validation]
    return filters, addresses, sans


def test_without_egress_policies_every_endpoint_is_reachable():
    filters, addresses, sans = outbound(MESH)
    assert [name for name, _ in filters] == ["envoy.filters.network.tcp_proxy"]
    assert addresses == ["127.0.0.11", "127.0.0.12"] and sans == ["db-primary", "db-replica"]


def test_an_egress_allow_for_one_tier_keeps_only_its_endpoint_and_identity():
    text = MESH + egress("ALLOW", "{workloads: {matchLabels: {tier: primary}}}")
    filters, addresses, sans = outbound(text)
    assert [name for name, _ in filters] == ["envoy.filters.network.tcp_proxy"]
    assert addresses == ["127.0.0.11"] and sans == ["db-primary"]


def test_an_upstream_egress_denies_entirely_is_closed_by_a_filter_named_after_the_rule():
    filters, addresses, sans = outbound(MESH + egress("DENY", "{namespaces: [shop]}"))
    assert filters[0] == ("envoy.filters.network.rbac", ["shop/web-deny#0"])
    assert filters[-1][0] == "envoy.filters.network.tcp_proxy"
    assert addresses == [] and sans == []


def test_default_egress_deny_names_the_default():
    deny = "{trustDomain: example.org, defaultEgressPolicy: deny}"
    text = MESH.replace("{trustDomain: example.org}", deny)
    filters, addresses, _ = outbound(text)
    assert filters[0] == ("envoy.filters.network.rbac", ["default:deny"]) and addresses == []
