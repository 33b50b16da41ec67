from meshwarden.engine import Request, decide, parse_text, reload

from .conftest import mesh_from

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"


def policy(body: str) -> str:
    return (
        "---\napiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, namespace: shop}\n" + body
    )


ALLOW_OPS = policy(
    "spec:\n  selector: {matchLabels: {app: backend}}\n  rules:\n  - from: [{namespaces: [ops]}]\n"
)
ALLOW_FRONTEND = ALLOW_OPS.replace("[ops]", "[shop]")


def docs(text: str) -> list:
    documents, problems = parse_text(text)
    assert not problems
    return documents


def allowed(mesh, identity: str) -> bool:
    return decide(
        mesh.plan("shop/backend-1"), Request.build("shop/backend-1", 8080, identity=identity)
    ).allowed


def test_one_policy_change_is_incremental_and_touches_only_its_workloads(shop_workloads):
    before = mesh_from(shop_workloads + ALLOW_OPS)
    result = reload(before, docs(shop_workloads + ALLOW_FRONTEND))
    assert result.incremental and result.mesh is not None
    assert result.affected == {"shop/backend-1"}
    assert result.mesh.plan("shop/frontend-1") is before.plan("shop/frontend-1")
    assert not allowed(before, FRONTEND) and allowed(result.mesh, FRONTEND)


def test_unchanged_documents_keep_the_same_snapshot(shop_workloads):
    before = mesh_from(shop_workloads + ALLOW_OPS)
    result = reload(before, docs(shop_workloads + ALLOW_OPS))
    assert result.mesh is before and not result.affected


def test_an_invalid_change_yields_no_snapshot_and_located_errors(shop_workloads):
    before = mesh_from(shop_workloads + ALLOW_OPS)
    bad = ALLOW_OPS.replace("  - from: [{namespaces: [ops]}]\n", "  - to: [{paths: [/x]}]\n")
    result = reload(before, docs(shop_workloads + bad))
    assert result.mesh is None
    assert ["tcp port 9000" in e.message for e in result.errors] == [True]


def test_a_workload_change_recompiles_everything(shop_workloads):
    before = mesh_from(shop_workloads + ALLOW_OPS)
    moved = shop_workloads.replace("addresses: [127.0.0.3]", "addresses: [127.0.0.30]")
    result = reload(before, docs(moved + ALLOW_OPS))
    assert not result.incremental and result.mesh is not None
    assert str(result.mesh.registry.workloads["shop/backend-1"].addresses[0]) == "127.0.0.30"


def test_a_deleted_policy_stops_applying(shop_workloads):
    before = mesh_from(shop_workloads + ALLOW_OPS)
    result = reload(before, docs(shop_workloads))
    assert result.incremental and result.mesh is not None
    assert allowed(result.mesh, FRONTEND)  # default allow again
