"""Egress outside the sidecars, held back by real nftables and iptables in network namespaces
(prefix `kg`): a workload's sockets (keyed by its unix:uid selector) reach exactly what
`explain --from-workload` allows, TCP, UDP and SCTP; UDP 53 never opens TCP 53; nobody reaches
another workload's app port behind its sidecar; the Host's own traffic leaves only by its
`egress` rules (and to the sidecars' ports) under `defaultEgress: deny`; SCTP ingress is held to
what `explain --protocol sctp` allows.

The kernel has no SCTP module here, so SCTP travels over raw sockets (tests/netns/_sctp.py):
real SCTP packets through the real filters."""

from __future__ import annotations

import ipaddress

import pytest
from meshwarden.engine import (
    CompiledMesh,
    Request,
    decide,
    decide_outbound,
    decide_path,
)
from meshwarden.render import (
    OUT_CHAIN,
    IptablesOptions,
    node_filter,
    render_iptables,
    render_nftables,
)

from meshwarden._enforce import TableEnforcer, loaded_table

from ._filters import LOAD, compile_text, load_nftables
from ._lab import CLIENT6_IPS, CLIENT_IPS, HOST6_IP, HOST_IP, inside, lab

DB, STRANGER, OUTSIDE = CLIENT_IPS  # a workload on another node, two addresses outside the mesh
WEB_UID, OTHER_UID = 1500, 1600

# shop/web (uid WEB_UID on h1) and shop/db on another node, whose app port hides behind a sidecar
WEB_AND_DB = f"""
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec: {{addresses: [{HOST_IP}], selectors: ["node:h1", "unix:uid:{WEB_UID}"]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: db, namespace: shop, labels: {{app: db}}}}
spec:
  addresses: [{DB}]
  ports: [{{port: 5432, targetPort: 15432}}]
  selectors: ["node:h2"]
"""
MESH = f"""
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{trustDomain: example.org}}
---{WEB_AND_DB}---
apiVersion: meshwarden.io/v1alpha1
kind: Host
metadata: {{name: h1}}
spec:
  addresses: [{HOST_IP}]
  defaultEgress: deny
  ingress: [{{ports: [22]}}]
  egress: [{{ports: [53], protocol: udp, to: [{{ipBlocks: [{OUTSIDE}/32]}}]}}]
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: diameter, namespace: shop, labels: {{app: diameter}}}}
spec:
  addresses: [{HOST_IP}]
  ports: [{{port: 3868, protocol: sctp}}]
  selectors: ["node:h1", "unix:uid:1700"]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: web-out, namespace: shop}}
spec:
  direction: egress
  selector: {{matchLabels: {{app: web}}}}
  rules:
  - to: [{{ipBlocks: [10.77.2.0/24]}}]
    ports: [443]
  - to: [{{ipBlocks: [0.0.0.0/0]}}]
    ports: [53]
    protocols: [udp]
  - to: [{{workloads: {{matchLabels: {{app: db}}}}}}]
  - to: [{{ipBlocks: [10.77.1.0/24], notIpBlocks: [10.77.1.128/25]}}]
    protocols: [sctp]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: diameter-from-db, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: diameter}}}}
  rules: [{{from: [{{workloads: {{matchLabels: {{app: db}}}}}}], to: [{{protocols: [sctp]}}]}}]
"""
PORTS = (("tcp", 443), ("tcp", 53), ("udp", 53), ("tcp", 5432), ("tcp", 15432), ("sctp", 3868))
SERVED = ["tcp:443", "tcp:53", "udp:53", "tcp:5432", "tcp:15432", "sctp:3868"]


def compiled() -> CompiledMesh:
    return compile_text(MESH)


def egress_allowed(mesh: CompiledMesh, target: str, port: int, protocol: str) -> bool:
    """What `explain --from-workload shop/web` says of this egress (--to db, else --to-ip)."""
    if target == DB:
        return decide_path(mesh, "shop/web", "shop/db", port, protocol).egress.allowed  # type: ignore[union-attr]
    address = ipaddress.ip_address(target)
    return decide_outbound(mesh, "shop/web", address, port, protocol).allowed


@pytest.mark.parametrize("kind", sorted(LOAD))
def test_a_workloads_sockets_reach_what_explain_allows_and_the_host_only_its_rules(
    kind: str,
) -> None:
    mesh = compiled()
    with lab(prefix="kg") as net:
        net.serve(net.client, *SERVED)
        LOAD[kind](net, mesh)
        targets = [(p, HOST_IP, dst, port) for dst in CLIENT_IPS for p, port in PORTS]
        web = net.probe(net.host, targets, uid=WEB_UID)
        other = net.probe(net.host, targets, uid=OTHER_UID)
    outcomes = {(t[2], t[0], t[3]): (w, o) for t, w, o in zip(targets, web, other, strict=True)}
    for (target, protocol, port), (seen, _) in outcomes.items():
        allowed = egress_allowed(mesh, target, port, protocol)
        if (target, port) == (DB, 15432):  # db's app port behind its sidecar: never directly
            assert allowed and seen == "refused"
            continue
        assert (seen == "open") == allowed, (target, protocol, port, seen)
    assert [outcomes[(STRANGER, p, n)][0] for p, n in (("udp", 53), ("tcp", 53))] == [
        "open",
        "refused",  # udp 53 never opens tcp 53
    ]
    # every other socket of the Host: its egress rule (udp 53 to OUTSIDE) and the sidecar port
    opened = sorted(key for key, (_, seen) in outcomes.items() if seen == "open")
    assert opened == [(DB, "tcp", 5432), (OUTSIDE, "udp", 53)]


@pytest.mark.parametrize("kind", sorted(LOAD))
def test_sctp_to_a_workload_port_is_admitted_exactly_as_explain_allows(kind: str) -> None:
    mesh = compiled()
    with lab(prefix="kg") as net:
        net.serve(net.host, "sctp:3868")
        LOAD[kind](net, mesh)
        targets = [("sctp", source, HOST_IP, 3868) for source in CLIENT_IPS]
        results = net.probe(net.client, targets)
    identities = {DB: "spiffe://example.org/ns/shop/sa/db"}
    for (_, source, _, port), result in zip(targets, results, strict=True):
        request = Request.build(
            "shop/diameter",
            port,
            identity=identities.get(source),
            source_ip=source,
            protocol="sctp",
        )
        assert (result == "open") == decide(mesh.plan("shop/diameter"), request).allowed
    assert results == ["open", "silent", "silent"]  # db only: STRICT, no identity elsewhere


def test_the_agents_enforcer_applies_egress_with_ingress_and_keeps_both_on_failure() -> None:
    table = render_nftables(node_filter(compiled(), "h1"))
    broken = table.replace('\t\toifname "lo" accept', '\t\toifname "lo" accept\n\t\tjump nowhere')
    assert broken != table
    web_443 = [("tcp", HOST_IP, STRANGER, 443)]
    with lab(prefix="kg") as net:
        net.serve(net.client, "tcp:443")
        assert net.probe(net.host, web_443, uid=WEB_UID) == ["open"]  # nothing loaded yet
        enforcer = TableEnforcer()
        assert inside(net.host, lambda: enforcer.sync(table))
        listing = inside(net.host, loaded_table)
        assert "hook input" in listing and "hook output" in listing
        assert net.probe(net.host, web_443, uid=WEB_UID) == ["refused"]
        assert not inside(net.host, lambda: enforcer.sync(broken))
        assert "nowhere" in str(enforcer.error) and inside(net.host, loaded_table) == listing
        assert net.probe(net.host, web_443, uid=WEB_UID) == ["refused"]


IPV6_MESH = f"""
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{trustDomain: example.org}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec: {{addresses: ["{HOST6_IP}"], selectors: ["node:h1", "unix:uid:{WEB_UID}"]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: web-out, namespace: shop}}
spec:
  direction: egress
  selector: {{matchLabels: {{app: web}}}}
  rules: [{{to: [{{ipBlocks: ["fd77::2:0/112"]}}], ports: [443]}}]
"""


@pytest.mark.parametrize("kind", ["nftables", "ip6tables"])
def test_ipv6_egress_reaches_what_explain_allows(kind: str) -> None:
    mesh = compile_text(IPV6_MESH)
    with lab(prefix="kg") as net:
        net.add_ipv6()
        net.serve(net.client, "tcp6:443", "udp6:443")
        if kind == "nftables":
            load_nftables(net, mesh)
        else:
            rendered = render_iptables(node_filter(mesh, "h1"), IptablesOptions(ipv6=True))
            net.sh("ip6tables-restore", "--noflush", ns=net.host, text=rendered)
            net.sh("ip6tables", "-I", "OUTPUT", "-j", OUT_CHAIN, ns=net.host)
        targets = [(p, HOST6_IP, dst, 443) for dst in CLIENT6_IPS for p in ("tcp", "udp")]
        seen = net.probe(net.host, targets, uid=WEB_UID)
    for (protocol, _, target, port), outcome in zip(targets, seen, strict=True):
        address = ipaddress.ip_address(target)
        allowed = decide_outbound(mesh, "shop/web", address, port, protocol).allowed
        assert (outcome == "open") == allowed, (target, protocol, outcome)
    assert seen == ["refused", "refused", "open", "open"]  # only fd77::2:0/112
