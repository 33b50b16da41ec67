"""The snapshot builder keeps each workload's wiring (clusters, endpoints, outbound listeners,
routes) encoded across policy changes, and never serves a stale one: after every incremental
change its snapshots equal those of a builder that starts from nothing."""

from __future__ import annotations

import itertools

from meshwarden.engine import CompiledMesh, parse_text, reload
from meshwarden.xds import SnapshotBuilder, TranslationContext
from meshwarden.xds._codec import EnvoyMessages
from meshwarden.xds._encode import ResourceEncoder
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER, Snapshot
from meshwarden.xds._translate import workload_resources


def doc(kind: str, metadata: str, spec: str) -> str:
    head = f"---\napiVersion: meshwarden.io/v1alpha1\nkind: {kind}\n"
    return f"{head}metadata: {metadata}\nspec: {spec}\n"


def db(name: str, account: str, address: str, tier: str) -> str:
    labels = f"{{app: db, tier: {tier}}}"
    spec = f"{{serviceAccount: {account}, addresses: [{address}], ports: [{{port: 5432}}]}}"
    return doc("Workload", f"{{name: {name}, namespace: shop, labels: {labels}}}", spec)


def mesh_text(replica_address: str = "127.0.0.12") -> str:
    return (
        doc("Mesh", "{name: mesh}", "{trustDomain: example.org}")
        + doc(
            "Service",
            "{name: db, namespace: shop}",
            "{selector: {matchLabels: {app: db}}, ports: [{port: 5432}]}",
        )
        + db("db-1", "db-primary", "127.0.0.11", "primary")
        + db("db-2", "db-replica", replica_address, "replica")
        + doc(
            "Workload",
            "{name: web-1, namespace: shop, labels: {app: web}}",
            "{addresses: [127.0.0.13], ports: [{port: 8080, protocol: http}], "
            "upstreams: [{service: shop/db, port: 5432, localPort: 15432}]}",
        )
    )


def ingress(path: str) -> str:
    spec = f'{{selector: {{matchLabels: {{app: web}}}}, rules: [{{to: [{{paths: ["{path}"]}}]}}]}}'
    return doc("AuthorizationPolicy", "{name: web-callers, namespace: shop}", spec)


def egress(action: str) -> str:
    spec = (
        f"{{direction: egress, action: {action}, selector: {{matchLabels: {{app: web}}}}, "
        "rules: [{to: [{workloads: {matchLabels: {tier: replica}}}]}]}"
    )
    return doc("AuthorizationPolicy", "{name: web-egress, namespace: shop}", spec)


def changed(previous: CompiledMesh | None, text: str) -> CompiledMesh:
    documents, problems = parse_text(text)
    result = reload(previous, documents)
    assert result.mesh is not None and not problems, [*problems, *result.diagnostics]
    return result.mesh


def fresh(mesh: CompiledMesh, ref: str) -> Snapshot:
    return SnapshotBuilder(TranslationContext()).snapshot(mesh, ref)


def bodies(snapshot: Snapshot) -> dict[str, dict[str, bytes]]:
    return {t: {n: r.body for n, r in named.items()} for t, named in snapshot.resources.items()}


def test_after_every_change_the_kept_wiring_equals_a_build_from_nothing() -> None:
    builder = SnapshotBuilder(TranslationContext())
    mesh = None
    steps = [
        mesh_text() + ingress("/a/*"),  # the first build
        mesh_text() + ingress("/b/*"),  # an ingress change: the wiring is kept
        mesh_text() + ingress("/b/*") + egress("DENY"),  # egress: web-1's endpoints lose db-2
        mesh_text() + ingress("/b/*") + egress("ALLOW"),  # egress changed: only db-2 is left
        mesh_text() + ingress("/b/*"),  # egress removed: both endpoints again
        mesh_text("127.0.0.22") + ingress("/b/*"),  # a registry change
    ]
    endpoints = []
    for text in steps:
        mesh = changed(mesh, text)
        for ref in sorted(mesh.plans):
            assert bodies(builder.snapshot(mesh, ref)) == bodies(fresh(mesh, ref)), (ref, text)
        endpoints.append(fresh(mesh, "shop/web-1").of_type(ENDPOINT)["out:shop/db:5432"].body)
    assert len(set(endpoints)) == 4  # the steps did change web-1's wiring


def test_the_split_translation_is_the_whole_workload() -> None:
    mesh = changed(None, mesh_text() + ingress("/a/*") + egress("DENY"))
    for ref in sorted(mesh.plans):
        whole = Snapshot.of(
            ResourceEncoder().encode_all(workload_resources(mesh, ref, TranslationContext()))
        )
        assert bodies(fresh(mesh, ref)) == bodies(whole)


def test_an_ingress_change_reuses_the_encoded_wiring() -> None:
    builder = SnapshotBuilder(TranslationContext())
    first = changed(None, mesh_text() + ingress("/a/*"))
    before = builder.snapshot(first, "shop/web-1")
    after = builder.snapshot(changed(first, mesh_text() + ingress("/b/*")), "shop/web-1")
    assert after.version(LISTENER) != before.version(LISTENER)
    assert after.of_type(CLUSTER)["out:shop/db:5432"] is before.of_type(CLUSTER)["out:shop/db:5432"]
    assert after.version(CLUSTER) == before.version(CLUSTER)


# -- the inbound RBAC: translated once per distinct plan, shared by equal plans --------------
def replicas_text(default: str, web_path: str, db_from: str | None) -> str:
    """web-1/web-2 (HTTP) and db-1/db-2 (TCP) are replicas; `db_from`: a policy admitting that
    namespace to the primary db only (db-2's plan then has no policy at all)."""
    text = (
        doc("Mesh", "{name: mesh}", f"{{trustDomain: example.org, defaultPolicy: {default}}}")
        + db("db-1", "db", "127.0.0.11", "primary")
        + db("db-2", "db", "127.0.0.12", "replica")
        + ingress(web_path)
    )
    for name, address in (("web-1", "127.0.0.13"), ("web-2", "127.0.0.14")):
        text += doc(
            "Workload",
            f"{{name: {name}, namespace: shop, labels: {{app: web}}}}",
            f"{{addresses: [{address}], ports: [{{port: 8080, protocol: http}}]}}",
        )
    if db_from is not None:
        spec = (
            "{selector: {matchLabels: {tier: primary}}, "
            f"rules: [{{from: [{{namespaces: [{db_from}]}}]}}]}}"
        )
        text += doc("AuthorizationPolicy", "{name: db-callers, namespace: shop}", spec)
    return text


def rbac_of(snapshot: Snapshot, listener: str) -> list[dict[str, object]]:
    """The RBAC filters of a listener as Envoy decodes them (HTTP or network)."""
    body = snapshot.of_type(LISTENER)[listener].body
    decoded = EnvoyMessages.decode(LISTENER.rsplit("/", 1)[-1], body)
    found = []
    for chain in decoded["filterChains"]:
        for network in chain["filters"]:
            typed = network["typedConfig"]
            for http in typed.get("httpFilters", []):
                if http["name"] == "envoy.filters.http.rbac":
                    found.append(http["typedConfig"])
            if network["name"] == "envoy.filters.network.rbac":
                found.append(typed)
    return found


def test_replicas_share_one_translation_of_their_inbound_rbac() -> None:
    builder = SnapshotBuilder(TranslationContext())
    mesh = changed(None, replicas_text("deny", "/a/*", "shop"))
    web_1 = builder.snapshot(mesh, "shop/web-1")
    translated = builder.rbac.translated
    web_2 = builder.snapshot(mesh, "shop/web-2")
    assert builder.rbac.translated == translated  # web-2 found web-1's filters
    assert rbac_of(web_1, "in:8080") == rbac_of(web_2, "in:8080") != []
    body_1, body_2 = (s.of_type(LISTENER)["in:8080"].body for s in (web_1, web_2))
    assert body_1 != body_2  # the listeners are each workload's own (address, cluster names)
    shared = [f.encoded for f in builder.rbac.filters(mesh.plan("shop/web-2"), 8080, True, True)]
    for _, _, rbac_bytes in shared:  # the very same RBAC bytes inside both listeners
        assert rbac_bytes in body_1 and rbac_bytes in body_2
    db_1, db_2 = (builder.snapshot(mesh, f"shop/db-{i}") for i in (1, 2))
    assert rbac_of(db_1, "in:5432") != rbac_of(db_2, "in:5432")  # different plans


def test_a_change_to_one_app_never_reaches_another_apps_rbac() -> None:
    builder = SnapshotBuilder(TranslationContext())
    steps = [
        replicas_text("deny", "/a/*", "shop"),
        replicas_text("deny", "/b/*", "shop"),  # web's policy changes, db's does not
        replicas_text("deny", "/b/*", "other"),  # db's changes, web's does not
        replicas_text("deny", "/b/*", None),  # db-1 and db-2 are left without policies
        replicas_text("allow", "/b/*", None),  # ... and only the mesh default decides
    ]
    mesh, seen = None, []
    for text in steps:
        mesh = changed(mesh, text)
        built = {ref: builder.snapshot(mesh, ref) for ref in sorted(mesh.plans)}
        for ref, snapshot in built.items():
            assert bodies(snapshot) == bodies(fresh(mesh, ref)), (ref, text)
        seen.append({ref: s.version(LISTENER) for ref, s in built.items()})

    def changes(ref: str) -> list[bool]:
        return [a[ref] != b[ref] for a, b in itertools.pairwise(seen)]

    assert changes("shop/web-1") == changes("shop/web-2") == [True, False, False, False]
    assert changes("shop/db-1") == [False, True, True, True]
    assert changes("shop/db-2") == [False, False, False, True]


def test_the_shared_rbac_is_kept_for_the_last_two_meshes_only() -> None:
    builder = SnapshotBuilder(TranslationContext())
    mesh, translated = None, []
    for k in range(8):
        mesh = changed(mesh, replicas_text("deny", f"/v{k}/*", "shop"))
        for ref in sorted(mesh.plans):
            builder.snapshot(mesh, ref)
        translated.append(builder.rbac.translated)
    per_mesh = translated[0]  # web (mTLS and plaintext branch), db-1, db-2
    assert translated[-1] > 2 * per_mesh  # every change made new entries ...
    assert len(builder.rbac) <= 2 * per_mesh  # ... and the old ones were dropped
