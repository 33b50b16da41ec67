"""A path to a port the destination does not declare: nothing listens there (no sidecar
listener, no packet-filter rule), so `decide_path` (what `matrix` asks) denies it and says why,
even where no policy would refuse it."""

from __future__ import annotations

from meshwarden.engine import decide_path

from .conftest import mesh_from


def test_an_undeclared_port_is_not_reachable_and_the_answer_names_it(shop_workloads):
    mesh = mesh_from(shop_workloads)  # no policy at all: every declared port is open
    assert decide_path(mesh, "shop/frontend-1", "shop/backend-1", 9000).allowed
    path = decide_path(mesh, "shop/frontend-1", "shop/backend-1", 9001)
    assert not path.allowed and path.direction == "ingress"
    assert path.ingress is not None and path.ingress.policy == "port:undeclared"
    assert "port 9001/tcp not declared by shop/backend-1" in path.ingress.reason


def test_a_port_declared_for_tcp_only_is_not_reachable_over_udp(shop_workloads):
    mesh = mesh_from(shop_workloads)
    path = decide_path(mesh, "shop/frontend-1", "shop/backend-1", 9000, "udp")
    assert not path.allowed
    assert path.ingress is not None
    assert "port 9000/udp not declared by shop/backend-1" in path.ingress.reason


def test_a_workload_without_ports_is_reachable_on_none(shop_workloads):
    mesh = mesh_from(shop_workloads)
    assert not decide_path(mesh, "shop/backend-1", "shop/frontend-1", 8080).allowed
