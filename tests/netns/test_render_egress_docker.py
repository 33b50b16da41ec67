"""Egress of a container workload on a Docker-style host (network namespaces prefixed `kg`): its
packets are routed through the host, so the filter keys them on the container's address — the
nftables `forward` chain, or DOCKER-USER (`-i BRIDGE -s ADDR`) next to Docker's own chains — and
they reach exactly what `explain --from-workload` allows, except app ports behind sidecars."""

from __future__ import annotations

import ipaddress

import pytest
from meshwarden.engine import CompiledMesh, decide_outbound, decide_path
from meshwarden.render import IptablesOptions, node_filter, render_iptables

from ._filters import compile_text, load_nftables
from ._lab import CLIENT_IPS, CONTAINER_IP, HOST_IP, Lab, lab

DB, STRANGER, OUTSIDE = CLIENT_IPS
MESH = f"""
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{trustDomain: example.org}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: shop-api, namespace: shop, labels: {{app: api}}}}
spec: {{addresses: [{CONTAINER_IP}], selectors: ["node:h1"]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: db, namespace: shop, labels: {{app: db}}}}
spec: {{addresses: [{DB}], ports: [{{port: 5432, targetPort: 15432}}], selectors: ["node:h2"]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: api-out, namespace: shop}}
spec:
  direction: egress
  selector: {{matchLabels: {{app: api}}}}
  rules:
  - {{to: [{{ipBlocks: [10.77.2.0/24]}}], ports: [443]}}
  - {{to: [{{ipBlocks: [0.0.0.0/0]}}], ports: [53], protocols: [udp]}}
  - {{to: [{{workloads: {{matchLabels: {{app: db}}}}}}]}}
"""
PORTS = (("tcp", 443), ("tcp", 53), ("udp", 53), ("tcp", 5432), ("tcp", 15432))


def load_docker_user(net: Lab, mesh: CompiledMesh, bridge: str) -> None:
    options = IptablesOptions("DOCKER-USER", interface=bridge)
    rendered = render_iptables(node_filter(mesh, "h1"), options)
    net.sh("iptables-restore", "--noflush", ns=net.host, text=rendered)


def explain_allows(mesh: CompiledMesh, target: str, protocol: str, port: int) -> bool:
    if target == DB:
        egress = decide_path(mesh, "shop/shop-api", "shop/db", port, protocol).egress
        assert egress is not None
        return egress.allowed
    address = ipaddress.ip_address(target)
    return decide_outbound(mesh, "shop/shop-api", address, port, protocol).allowed


@pytest.mark.parametrize("kind", ["nftables", "docker-user"])
def test_a_container_reaches_what_explain_allows_through_the_hosts_forward_path(
    kind: str,
) -> None:
    mesh = compile_text(MESH)
    with lab(prefix="kg") as net:
        bridge = f"{net.tag}br"
        net.add_docker_bridge(bridge)
        net.sh("ip", "route", "add", "10.88.0.0/24", "via", HOST_IP, ns=net.client)
        net.serve(net.client, *(f"{p}:{n}" for p, n in PORTS))
        if kind == "nftables":
            load_nftables(net, mesh)
        else:
            load_docker_user(net, mesh, bridge)
        targets = [(p, CONTAINER_IP, dst, port) for dst in CLIENT_IPS for p, port in PORTS]
        seen = net.probe(net.container, targets)
        rules = net.sh("iptables", "-S", ns=net.host)
    for (protocol, _, target, port), outcome in zip(targets, seen, strict=True):
        allowed = explain_allows(mesh, target, protocol, port)
        if (target, port) == (DB, 15432):  # db's app port behind its sidecar: never directly
            assert allowed and outcome == "refused"
            continue
        assert (outcome == "open") == allowed, (target, protocol, port, outcome)
    opened = [
        (t[2], t[0], t[3]) for t, outcome in zip(targets, seen, strict=True) if outcome == "open"
    ]
    assert opened == [
        *((DB, protocol, port) for protocol, port in PORTS if port != 15432),
        (STRANGER, "udp", 53),  # udp 53 anywhere, never tcp 53
        (OUTSIDE, "tcp", 443),
        (OUTSIDE, "udp", 53),
    ]
    assert "-A FORWARD -j DOCKER-USER\n-A FORWARD -j ACCEPT" in rules  # Docker's chains intact
