"""Differential test for egress: random egress policies at a source workload — the engine's
`decide_path` (what `explain --from-workload` answers) and a real Envoy running the source's
translated outbound side agree on which destination workloads a connection can reach."""

from __future__ import annotations

import functools
import json
import os
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from meshwarden.engine import (
    TrustDomain,
    decide_path,
)
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    SystemClock,
)
from meshwarden.xds import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    StaticTls,
    TranslationContext,
    workload_resources,
)

from .._loopback import claim_net, free_port
from ._mesh import document, mesh_document, service, workload
from ._static_envoy import compile_docs, static_envoy, write_svid

TD = "egress.test"
SETS = int(os.environ.get("MESHWARDEN_EGRESS_DIFFERENTIAL_SETS", "24"))
CONNECTIONS = 4  # per set: every one must reach an allowed member, or none may connect
PORT = 9000
MEMBERS = {  # name -> (tier label, service account)
    "db-0": ("a", "db-a"),
    "db-1": ("a", "db-a"),
    "db-2": ("b", "db-b"),
    "db-3": ("b", "db-c"),
}
SOURCE = "shop/src"


@functools.cache
def _net() -> str:
    return claim_net()  # of this process: no other run's


def _address(i: int) -> str:
    return f"{_net()}.{i + 10}"


class _Member:
    """A TLS server with a member's SVID on its address: it answers every connection with its
    name (so the test sees which endpoint Envoy reached) and closes."""

    def __init__(self, name: str, address: str, svid: tuple[str, str]) -> None:
        self.name = name
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*svid)
        self.sock = socket.create_server((address, PORT))
        self.sock.settimeout(0.5)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                conn.settimeout(15)
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(self.name.encode())
            except OSError:
                conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


def _destination(rng: random.Random) -> dict[str, Any]:
    return rng.choice(
        [
            {"workloads": {"matchLabels": {"tier": "a"}}},
            {"workloads": {"matchLabels": {"tier": "b"}, "namespaces": ["shop"]}},
            {"identities": [f"spiffe://{TD}/ns/shop/sa/db-c"]},
            {"identities": [f"spiffe://{TD}/ns/shop/*"]},
            {"notIdentities": [f"spiffe://{TD}/ns/shop/sa/db-a"]},
            {"namespaces": ["shop"]},
            {"namespaces": ["ops"]},
            {"ipBlocks": ["127.0.0.0/8"]},  # never a mesh workload
        ]
    )


def _rule(rng: random.Random) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if rng.random() < 0.8:
        rule["to"] = [_destination(rng) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.4:
        rule["ports"] = [rng.choice([PORT, PORT + 1, f"{PORT - 5}-{PORT + 5}"])]
    if rng.random() < 0.3:
        rule["protocols"] = [rng.choice(["tcp", "udp"])]
    return rule


def mesh_documents(rng: random.Random, local_port: int) -> list[dict[str, Any]]:
    mesh = {"trustDomain": TD, "defaultEgressPolicy": rng.choice(["allow", "deny"])}
    docs = [mesh_document(mesh), service("shop/db", "db", [{"port": PORT, "protocol": "tcp"}])]
    for i, (name, (tier, account)) in enumerate(MEMBERS.items()):
        spec = {
            "serviceAccount": account,
            "addresses": [_address(i)],
            "ports": [{"port": PORT, "protocol": "tcp"}],
        }
        doc = workload(f"shop/{name}", "db", spec)
        doc["metadata"]["labels"]["tier"] = tier
        docs.append(doc)
    upstream = {"service": "shop/db", "port": PORT, "localPort": local_port}
    docs.append(workload(SOURCE, "src", {"upstreams": [upstream]}))
    for k in range(rng.randint(0, 3)):
        spec = {
            "direction": "egress",
            "selector": {"matchLabels": {"app": "src"}},
            "action": rng.choice(["ALLOW", "ALLOW", "DENY"]),
            "mode": rng.choice(["enforce", "enforce", "enforce", "dry-run"]),
            "rules": [_rule(rng) for _ in range(rng.randint(0, 2))],
        }
        docs.append(document("AuthorizationPolicy", f"shop/egress-{k}", spec))
    return docs


def _static(resources: dict[str, list[dict[str, Any]]], prefix: str) -> tuple[list[Any], list[Any]]:
    """The source's outbound listener and cluster, the EDS cluster made STATIC with its
    endpoints, every name prefixed so many sets share one Envoy."""
    endpoints = {e["clusterName"]: e for e in resources[ENDPOINT]}
    clusters = []
    for cluster in resources[CLUSTER]:
        if cluster.get("type") == "EDS":
            cluster = {k: v for k, v in cluster.items() if k != "edsClusterConfig"}
            cluster["type"] = "STATIC"
            cluster["loadAssignment"] = endpoints[cluster["name"]]
        clusters.append(cluster)
    text = json.dumps([resources[LISTENER], clusters]).replace('"out:', f'"{prefix}out:')
    listeners, renamed = json.loads(text)
    return listeners, renamed


@pytest.fixture(scope="module")
def egress_sets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    folder = tmp_path_factory.mktemp("egress-differential")
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    bundle = folder / "bundle.pem"
    bundle.write_bytes(ca.bundle().x509_pem())
    chain, key = write_svid(ca, f"spiffe://{TD}/ns/shop/sa/src", folder)
    members = [
        _Member(name, _address(i), write_svid(ca, f"spiffe://{TD}/ns/shop/sa/{sa}", folder))
        for i, (name, (_, sa)) in enumerate(MEMBERS.items())
    ]
    ctx = TranslationContext(static_tls=StaticTls(chain, key, str(bundle), TD))
    sets, listeners, clusters = [], [], []
    for i in range(SETS):
        rng, local_port = random.Random(9100 + i), free_port()
        compiled = compile_docs(mesh_documents(rng, local_port))
        found = _static(workload_resources(compiled, SOURCE, ctx), f"set{i}:")
        listeners += found[0]
        clusters += found[1]
        sets.append((local_port, compiled))
    try:
        with static_envoy(folder, listeners, clusters):
            yield sets
    finally:
        for member in members:
            member.stop()


def _reached(local_port: int) -> str:
    """The member that answered through the source's outbound listener ("" if none did)."""
    try:  # a refused connection is closed at once; an allowed one answers within seconds
        with socket.create_connection(("127.0.0.1", local_port), timeout=15) as conn:
            conn.settimeout(15)
            return conn.recv(64).decode()
    except OSError:
        return ""


def test_envoy_reaches_exactly_the_destinations_egress_allows(egress_sets: list[Any]) -> None:
    disagreements, open_sets = [], 0
    for i, (local_port, compiled) in enumerate(egress_sets):
        allowed = {
            name for name in MEMBERS if decide_path(compiled, SOURCE, f"shop/{name}", PORT).allowed
        }
        open_sets += bool(allowed)
        for _ in range(CONNECTIONS):
            got = _reached(local_port)
            agrees = (got in allowed) if allowed else got == ""
            if not agrees:
                reached = got or "nothing (connection closed)"
                disagreements.append(f"set {i}: engine allows {sorted(allowed)}, Envoy {reached}")
    print(f"\negress differential: {len(egress_sets)} sets, {open_sets} with reachable members")
    assert 0 < open_sets < len(egress_sets), "the random sets must contain both outcomes"
    assert not disagreements, "\n".join(disagreements)
