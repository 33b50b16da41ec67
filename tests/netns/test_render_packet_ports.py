"""UDP workload ports in real nftables and iptables (network namespaces prefixed `eg`): no
sidecar carries them, so the filter admits exactly the addresses `explain --protocol udp` allows
— identity rules resolved to the addresses of the workloads with that identity — and a rule for
UDP 53 never opens TCP 53."""

from __future__ import annotations

import pytest
from meshwarden.engine import CompiledMesh, Request, decide

from ._filters import LOAD, compile_text
from ._lab import CLIENT_IPS, HOST_IP, lab

WEB, STRANGER, BATCH = CLIENT_IPS  # a workload, an address outside the mesh, another workload

MESH = f"""
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{trustDomain: example.org}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: dns, namespace: shop, labels: {{app: dns}}}}
spec:
  addresses: [{HOST_IP}]
  ports: [{{port: 53, protocol: udp}}, {{port: 53, protocol: tcp}}, {{port: 5353, protocol: udp}}]
  selectors: ["node:h1"]
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec: {{addresses: [{WEB}], selectors: ["node:h2"]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: batch, namespace: shop, labels: {{app: batch}}}}
spec: {{addresses: [{BATCH}], selectors: ["node:h2"]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: dns-from-web, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: dns}}}}
  rules:
  - from: [{{workloads: {{matchLabels: {{app: web}}}}}}]
    to: [{{ports: [53], protocols: [udp]}}]
  - to: [{{ports: [5353], protocols: [udp]}}]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: no-batch, namespace: shop}}
spec:
  action: DENY
  selector: {{matchLabels: {{app: dns}}}}
  rules: [{{from: [{{workloads: {{matchLabels: {{app: batch}}}}}}]}}]
"""
IDENTITY = {
    WEB: "spiffe://example.org/ns/shop/sa/web",
    BATCH: "spiffe://example.org/ns/shop/sa/batch",
}


def compiled() -> CompiledMesh:
    return compile_text(MESH)


@pytest.mark.parametrize("kind", sorted(LOAD))
def test_udp_ports_admit_exactly_the_addresses_explain_allows(kind: str) -> None:
    mesh = compiled()
    with lab(prefix="eg") as net:
        net.serve(net.host, "udp:53", "tcp:53", "udp:5353")
        LOAD[kind](net, mesh)
        ports = (("udp", 53), ("tcp", 53), ("udp", 5353))
        targets = [(p, source, HOST_IP, port) for p, port in ports for source in CLIENT_IPS]
        results = net.probe(net.client, targets)
        for (protocol, source, _, port), result in zip(targets, results, strict=True):
            if protocol == "tcp":
                continue  # a sidecar port: identity is Envoy's to check, see below
            request = Request.build(
                "shop/dns", port, identity=IDENTITY.get(source), source_ip=source, protocol=protocol
            )
            decision = decide(mesh.plan("shop/dns"), request)
            assert (result == "open") == decision.allowed, (protocol, source, port, result)
        assert results == [
            "open",
            "silent",
            "silent",  # udp 53: web only (STRICT: no identity, no datagram)
            "silent",
            "silent",
            "silent",  # tcp 53: the udp rule never opens it
            "open",
            "silent",
            "silent",  # udp 5353: any workload but batch (DENY)
        ]
