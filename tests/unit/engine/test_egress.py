"""Egress at the source: incremental reloads, monitor mode, lint and the path function that
`matrix` calls, on small meshes written in the tests."""

from __future__ import annotations

import pytest
from meshwarden.engine import decide_path, lint, parse_text, reload

from .conftest import mesh_from


def egress(name: str, body: str, namespace: str = "shop") -> str:
    return (
        "---\napiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  direction: egress\n" + body
    )


ONLY_BACKEND_8080 = egress(
    "frontend-out",
    "  selector: {matchLabels: {app: frontend}}\n  rules:\n"
    "  - to: [{workloads: {matchLabels: {app: backend}}}]\n    ports: [8080]\n",
)
INGRESS_ONLY_OPS = (
    "---\napiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
    "metadata: {name: frontend-out, namespace: shop}\n"
    "spec:\n  selector: {matchLabels: {app: backend}}\n  rules: [{from: [{namespaces: [ops]}]}]\n"
)
PAIRS = [
    (src, dst, port)
    for src in ("shop/frontend-1", "shop/backend-1", "ops/ops-1")
    for dst in ("shop/backend-1", "shop/frontend-1")
    for port in (8080, 9000)
    if src != dst
]


def docs(text: str) -> list:
    documents, problems = parse_text(text)
    assert not problems, problems
    return documents


def answers(mesh) -> list[tuple[bool, str, str]]:
    found = []
    for src, dst, port in PAIRS:
        path = decide_path(mesh, src, dst, port)
        assert path.egress is not None and path.ingress is not None
        found.append((path.allowed, path.egress.policy, path.ingress.policy))
    return found


def test_an_incremental_egress_change_decides_like_a_full_compile(shop_workloads):
    before = mesh_from(shop_workloads)
    result = reload(before, docs(shop_workloads + ONLY_BACKEND_8080))
    assert result.incremental and result.mesh is not None
    assert result.affected == {"shop/frontend-1"}  # the source, not the destinations
    assert answers(result.mesh) == answers(mesh_from(shop_workloads + ONLY_BACKEND_8080))
    assert not decide_path(result.mesh, "shop/frontend-1", "shop/backend-1", 9000).allowed
    assert decide_path(before, "shop/frontend-1", "shop/backend-1", 9000).allowed


def test_a_policy_turned_from_ingress_to_egress_stops_guarding_its_old_targets(shop_workloads):
    before = mesh_from(shop_workloads + INGRESS_ONLY_OPS)
    assert not decide_path(before, "shop/frontend-1", "shop/backend-1", 8080).allowed
    result = reload(before, docs(shop_workloads + ONLY_BACKEND_8080))
    assert result.mesh is not None and not result.mesh.policies
    assert answers(result.mesh) == answers(mesh_from(shop_workloads + ONLY_BACKEND_8080))
    back = reload(result.mesh, docs(shop_workloads + INGRESS_ONLY_OPS))
    assert back.mesh is not None and not back.mesh.egress_policies
    assert answers(back.mesh) == answers(before)


def test_deleting_the_egress_policy_restores_the_default(shop_workloads):
    before = mesh_from(shop_workloads + ONLY_BACKEND_8080)
    result = reload(before, docs(shop_workloads))
    assert result.mesh is not None
    path = decide_path(result.mesh, "shop/frontend-1", "shop/backend-1", 9000)
    assert path.allowed and path.egress is not None and path.egress.policy == "default:allow"


def test_monitor_mode_runs_egress_policies_as_dry_run(shop_workloads):
    monitored = shop_workloads.replace(
        "mtls: PERMISSIVE}",
        "mtls: PERMISSIVE, defaultEgressPolicy: deny,\n"
        "  namespaces: {shop: {defaultMode: dry-run}}}",
    )
    mesh = mesh_from(monitored + ONLY_BACKEND_8080)
    path = decide_path(mesh, "shop/frontend-1", "shop/backend-1", 9000)
    assert path.allowed and path.egress is not None
    assert [(o.policy, o.decision) for o in path.egress.dry_run] == [("shop/frontend-out", "DENY")]
    other = decide_path(mesh, "ops/ops-1", "shop/backend-1", 9000)  # ops is not monitored
    assert not other.allowed and other.direction == "egress"


def test_lint_reports_an_egress_policy_that_selects_no_source(shop_workloads):
    nobody = egress("nobody-out", "  selector: {matchLabels: {app: none}}\n  rules: [{}]\n")
    mesh = mesh_from(shop_workloads + ONLY_BACKEND_8080 + nobody)
    unused = [f for f in lint(mesh) if f.code == "MW301"]
    assert [f.message for f in unused] == [
        "AuthorizationPolicy shop/nobody-out selects no workload"
    ]


def test_decide_path_names_unknown_workloads_with_key_error(shop_workloads):
    mesh = mesh_from(shop_workloads)
    with pytest.raises(KeyError):
        decide_path(mesh, "shop/nobody", "shop/backend-1", 8080)


def test_tcp_53_and_udp_53_are_two_ports_of_one_workload(shop_workloads):
    dns = shop_workloads.replace(
        "{port: 9000, protocol: tcp}]", "{port: 53, protocol: tcp}, {port: 53, protocol: udp}]"
    )
    workload = mesh_from(dns).registry.workloads["shop/backend-1"]
    assert sorted(workload.ports) == [53, 8080]  # what the sidecar serves
    assert list(workload.packet_ports) == [("udp", 53)]  # what the packet filter enforces
    assert workload.port_for(53, "udp") is not None and workload.port_for(53, "sctp") is None
