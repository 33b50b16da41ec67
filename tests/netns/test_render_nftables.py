"""Rendered filters loaded into real nftables and iptables in network namespaces: connections
from allowed and disallowed sources succeed or are dropped as the policy (and `explain`) says."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from meshwarden.engine import CompiledMesh, Request, check_documents, decide, parse_text
from meshwarden.render import IptablesOptions, node_filter, render_iptables, render_nftables

from ._lab import CLIENT6_IPS, CLIENT_IPS, HOST6_IP, HOST_IP, Lab, lab

INSIDE, OUTSIDE_RANGE, OTHER = CLIENT_IPS  # 10.77.1.2, 10.77.1.200 (excepted), 10.77.2.2

HOST_HEAD = f"""
apiVersion: meshwarden.io/v1alpha1
kind: Host
metadata: {{name: h1}}
spec:
  addresses: [{HOST_IP}]
  ingress:
  - ports: [22]
    from: [{{ipBlocks: [10.77.1.0/24]}}]
"""
# The seed's security group: SSH from the operations range, the web from anywhere, + DNS (udp).
SEED_HOST = (
    HOST_HEAD
    + """  - ports: [443]
  - ports: [53]
    protocol: udp
    from: [{ipBlocks: [10.77.2.0/24]}]
"""
)
# The seed's DOCKER-USER rules (192.168.1.0/24 -> port 80), with this lab's client range.
DOCKER_HOST = HOST_HEAD + "  - {ports: [80], from: [{ipBlocks: [10.77.1.0/24]}]}\n"

MESH = f"""
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{mtls: PERMISSIVE, defaultPolicy: deny}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: legacy, namespace: shop, labels: {{app: legacy}}}}
spec:
  addresses: [{HOST_IP}]
  ports: [{{port: 9000, targetPort: 19000}}]
  selectors: ["node:h1"]
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: api, namespace: shop, labels: {{app: api}}}}
spec:
  addresses: [{HOST_IP}]
  ports: [{{port: 8443, targetPort: 18443, protocol: http}}]
  selectors: ["node:h1"]
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: elsewhere, namespace: shop, labels: {{app: elsewhere}}}}
spec:
  addresses: [10.77.9.9]
  ports: [{{port: 7000}}]
  selectors: ["node:h2"]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: legacy-plaintext, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: legacy}}}}
  rules:
  - from: [{{ipBlocks: [10.77.1.0/24], notIpBlocks: [10.77.1.128/25]}}]
    to: [{{ports: [9000]}}]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: api-from-shop, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  rules: [{{from: [{{namespaces: [shop]}}]}}]
"""


def compiled(text: str) -> CompiledMesh:
    documents, problems = parse_text(text, "policy.yaml")
    assert not problems
    mesh, found = check_documents(documents)
    assert mesh is not None, found
    return mesh


def apply_nftables(lab: Lab, text: str) -> None:
    lab.sh("nft", "-f", "-", ns=lab.host, text=render_nftables(node_filter(compiled(text), "h1")))


def apply_iptables(lab: Lab, text: str) -> None:
    rendered = render_iptables(node_filter(compiled(text), "h1"))
    lab.sh("iptables-restore", "--noflush", ns=lab.host, text=rendered)
    lab.sh("iptables", "-I", "INPUT", "-j", "MESHWARDEN", ns=lab.host)


APPLY: dict[str, Callable[[Lab, str], None]] = {
    "nftables": apply_nftables,
    "iptables": apply_iptables,
}


@pytest.mark.parametrize("kind", sorted(APPLY))
def test_seed_host_ssh_only_from_operations_web_from_anywhere_rest_closed(kind: str) -> None:
    with lab() as net:
        net.serve(net.host, "tcp:22", "tcp:443", "udp:53", "tcp:8081")
        APPLY[kind](net, SEED_HOST)
        targets = [
            ("tcp", INSIDE, HOST_IP, 22),
            ("tcp", OTHER, HOST_IP, 22),
            ("tcp", INSIDE, HOST_IP, 443),
            ("tcp", OTHER, HOST_IP, 443),
            ("udp", OTHER, HOST_IP, 53),
            ("udp", INSIDE, HOST_IP, 53),
            ("tcp", INSIDE, HOST_IP, 8081),
        ]
        assert net.probe(net.client, targets) == [
            "open",
            "silent",
            "open",
            "open",
            "open",
            "silent",
            "silent",
        ]
        local = [("tcp", "127.0.0.1", "127.0.0.1", 22), ("tcp", "127.0.0.1", "127.0.0.1", 8081)]
        assert net.probe(net.host, local) == ["open", "open"]


@pytest.mark.parametrize("kind", sorted(APPLY))
def test_mesh_ports_follow_policy_and_explain_app_ports_stay_local_others_untouched(
    kind: str,
) -> None:
    mesh = compiled(MESH)
    with lab() as net:
        net.serve(net.host, "tcp:9000", "tcp:19000", "tcp:8443", "tcp:18443", "tcp:7000")
        APPLY[kind](net, MESH)
        fallback = [("tcp", source, HOST_IP, 9000) for source in CLIENT_IPS]
        results = net.probe(net.client, fallback)
        for (_, source, _, port), result in zip(fallback, results, strict=True):
            verdict = decide(
                mesh.plan("shop/legacy"), Request.build("shop/legacy", port, source_ip=source)
            )
            assert (result == "open") == verdict.allowed, (source, result, verdict)
        assert results == ["open", "silent", "silent"]
        others = [
            ("tcp", OTHER, HOST_IP, 8443),
            ("tcp", INSIDE, HOST_IP, 19000),
            ("tcp", INSIDE, HOST_IP, 18443),
            ("tcp", OTHER, HOST_IP, 7000),
        ]
        assert net.probe(net.client, others) == ["open", "silent", "silent", "open"]
        local = [("tcp", "127.0.0.1", "127.0.0.1", 19000), ("tcp", "127.0.0.1", "127.0.0.1", 18443)]
        assert net.probe(net.host, local) == ["open", "open"]


def test_docker_user_chain_admits_the_range_to_the_published_port_only() -> None:
    with lab() as net:
        bridge = f"{net.tag}br"
        net.add_docker_bridge(bridge)
        net.serve(net.container, "tcp:80")
        rendered = render_iptables(
            node_filter(compiled(DOCKER_HOST), "h1"),
            IptablesOptions("DOCKER-USER", interface=bridge),
        )
        net.sh("iptables-restore", "--noflush", ns=net.host, text=rendered)
        targets = [("tcp", INSIDE, HOST_IP, 80), ("tcp", OTHER, HOST_IP, 80)]
        assert net.probe(net.client, targets) == ["open", "silent"]
        rules = net.sh("iptables", "-S", ns=net.host)
        assert "-A FORWARD -j DOCKER-USER\n-A FORWARD -j ACCEPT" in rules  # Docker's chains intact
        net.sh("iptables-restore", "--noflush", ns=net.host, text=rendered)
        assert net.sh("iptables", "-S", ns=net.host) == rules  # re-applying changes nothing


def apply_ip6tables(lab: Lab, text: str) -> None:
    rendered = render_iptables(node_filter(compiled(text), "h1"), IptablesOptions(ipv6=True))
    lab.sh("ip6tables-restore", "--noflush", ns=lab.host, text=rendered)
    lab.sh("ip6tables", "-I", "INPUT", "-j", "MESHWARDEN", ns=lab.host)


@pytest.mark.parametrize("apply", [apply_nftables, apply_ip6tables], ids=["nftables", "ip6tables"])
def test_ipv6_sources_are_filtered_and_neighbour_discovery_keeps_working(
    apply: Callable[[Lab, str], None],
) -> None:
    ssh_from = HOST_HEAD.replace("[10.77.1.0/24]", "[10.77.1.0/24, 'fd77::1:0/112']")
    policy = ssh_from.replace(f"addresses: [{HOST_IP}]", "addresses: []")  # every address closed
    with lab() as net:
        net.add_ipv6()
        net.serve(net.host, "tcp6:22", "tcp6:8081")
        apply(net, policy)
        net.sh("ip", "-6", "neigh", "flush", "all", ns=net.client)  # ND must pass the filter
        targets = [
            ("tcp", CLIENT6_IPS[0], HOST6_IP, 22),
            ("tcp", CLIENT6_IPS[1], HOST6_IP, 22),
            ("tcp", CLIENT6_IPS[0], HOST6_IP, 8081),
        ]
        assert net.probe(net.client, targets) == ["open", "silent", "silent"]
