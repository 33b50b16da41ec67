"""Node attestation and issuance authorisation against a real control plane (TLS front, grpc.aio
node API, CA persisted in its data dir) and a real agent, in one process."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from meshwarden.identities import (
    Agent,
    AgentConfig,
    AttestationError,
    IdentityCache,
    ManualClock,
    generate_key,
)
from meshwarden.identities._node_client import attest, make_csr, node_stub, open_channel
from meshwarden.protos import node_pb2 as pb

from meshwarden._server import ControlPlane, ServerOptions

from .harness import LoopThread

POLICIES = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: example.org}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: api, namespace: shop}
spec: {selectors: ["unix:uid:0", "node:node-a"]}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: db, namespace: shop}
spec: {selectors: ["unix:uid:0", "node:node-b"]}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: anywhere, namespace: shop}
spec: {selectors: ["unix:uid:0"]}
"""
API = "spiffe://example.org/ns/shop/sa/api"
DB = "spiffe://example.org/ns/shop/sa/db"
ANYWHERE = "spiffe://example.org/ns/shop/sa/anywhere"


@dataclass
class Plane:
    loop: LoopThread
    plane: ControlPlane
    clock: ManualClock
    address: str

    @property
    def roots(self) -> bytes:
        assert self.plane.ca is not None
        return bytes(self.plane.ca.bundle().x509_pem())

    def token(self, node: str, ttl: dt.timedelta = dt.timedelta(minutes=10)) -> str:
        return str(self.plane.tokens.create(node, ttl))

    def agent(self, data_dir: Path, token: str | None) -> Agent:
        cache = self.loop.call(IdentityCache)
        agent = Agent(AgentConfig(self.address, data_dir), cache, self.clock)
        self.loop.run(agent.start(self.roots, token))
        return agent


@contextlib.contextmanager
def running_plane(tmp_path: Path, policies: str = POLICIES, **options: Any) -> Iterator[Plane]:
    """A control plane on `policies` (those above by default); `options` override
    ServerOptions fields."""
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "mesh.yaml").write_text(policies)
    server_options = ServerOptions(
        tmp_path / "policies", tmp_path / "server", listen="127.0.0.1:0", **options
    )
    clock = ManualClock(dt.datetime.now(dt.UTC))
    loop = LoopThread()
    control = ControlPlane(server_options, clock)
    try:
        yield Plane(loop, control, clock, loop.run(control.start()))
    finally:
        loop.run(control.stop())
        loop.close()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path) as running:
        yield running


def test_join_token_attests_a_node_with_its_node_spiffe_id(plane: Plane) -> None:
    node = plane.loop.run(attest(plane.address, plane.roots, plane.token("node-a")))
    uri = node.chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert uri.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/meshwarden/node/node-a"
    ]


def test_join_token_reuse_is_refused(plane: Plane) -> None:
    token = plane.token("node-a")
    plane.loop.run(attest(plane.address, plane.roots, token))
    with pytest.raises(AttestationError, match="unknown or was already used"):
        plane.loop.run(attest(plane.address, plane.roots, token))


def test_expired_join_token_is_refused(plane: Plane) -> None:
    token = plane.token("node-a", ttl=dt.timedelta(minutes=1))
    plane.clock.advance(dt.timedelta(minutes=2))
    with pytest.raises(AttestationError, match="join token expired"):
        plane.loop.run(attest(plane.address, plane.roots, token))


def test_node_api_without_a_client_certificate_is_unauthenticated(plane: Plane) -> None:
    async def sync_without_certificate() -> None:
        async with open_channel(plane.address, plane.roots, None) as channel:
            await node_stub(channel).Sync(pb.SyncRequest(), timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        plane.loop.run(sync_without_certificate())
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _sign(plane: Plane, token: str, spiffe_id: str) -> pb.X509SVIDResult:
    async def sign() -> pb.X509SVIDResult:
        node = await attest(plane.address, plane.roots, token)
        request = pb.X509SVIDRequest(spiffe_id=spiffe_id, csr=make_csr(generate_key()))
        async with open_channel(plane.address, plane.roots, node) as channel:
            stub = node_stub(channel)
            response = await stub.SignX509SVIDs(pb.SignX509SVIDsRequest(requests=[request]))
        return response.results[0]

    return plane.loop.run(sign())


def test_csr_for_a_workload_pinned_to_another_node_is_refused(plane: Plane) -> None:
    result = _sign(plane, plane.token("node-a"), DB)
    assert not result.svid_chain
    assert "node 'node-a' may not serve" in result.error


def test_csr_for_an_unregistered_identity_is_refused(plane: Plane) -> None:
    result = _sign(plane, plane.token("node-a"), "spiffe://example.org/ns/shop/sa/admin")
    assert not result.svid_chain and "not the identity of any registered Workload" in result.error


def test_csr_for_a_servable_workload_is_signed_for_exactly_its_id(plane: Plane) -> None:
    result = _sign(plane, plane.token("node-b"), DB)
    assert result.error == ""
    leaf = x509.load_der_x509_certificate(result.svid_chain[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [DB]


def test_agent_gets_svids_only_for_workloads_its_node_may_serve(
    plane: Plane, tmp_path: Path
) -> None:
    agent = plane.agent(tmp_path / "agent", plane.token("node-a"))
    assert sorted(str(i.spiffe_id) for i in agent.cache.identities) == sorted([API, ANYWHERE])
    plane.loop.run(agent.stop())


def _spki(key: object) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined,no-any-return]


def _private_keys_in(directory: Path) -> list[bytes]:
    """Every PEM private key stored under `directory` (files and JSON string values)."""
    pattern = re.compile(rb"-----BEGIN PRIVATE KEY-----[^-]+-----END PRIVATE KEY-----\n?")
    found = []
    for path in directory.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            if path.suffix == ".json":
                text = json.dumps(json.loads(text)).encode().replace(b"\\n", b"\n")
            found += pattern.findall(text)
    return found


def test_server_data_dir_never_contains_a_workload_private_key(
    plane: Plane, tmp_path: Path
) -> None:
    agent = plane.agent(tmp_path / "agent", plane.token("node-a"))
    workload_keys = {_spki(i.svid.leaf.public_key()) for i in agent.cache.identities}
    assert len(workload_keys) == 2
    stored = _private_keys_in(plane.plane.data_dir)
    assert stored, "the server's own and CA keys are expected there"
    stored_public = {_spki(load_pem_private_key(k, None).public_key()) for k in stored}
    assert not workload_keys & stored_public
    plane.loop.run(agent.stop())


def test_agent_restart_reuses_its_0600_node_identity_without_a_token(
    plane: Plane, tmp_path: Path
) -> None:
    data_dir = tmp_path / "agent"
    first = plane.agent(data_dir, plane.token("node-a"))
    node_svid = first.node.chain[0] if first.node else None
    plane.loop.run(first.stop())
    modes = {p.name: p.stat().st_mode & 0o777 for p in data_dir.iterdir()}
    assert modes == {"node.key": 0o600, "node-svid.pem": 0o600, "bundle.json": 0o600}
    second = plane.agent(data_dir, token=None)
    assert second.node is not None and second.node.chain[0] == node_svid
    assert len(second.cache.identities) == 2
    plane.loop.run(second.stop())


def test_ca_rotation_reaches_the_agent_and_its_svids_move_to_the_new_ca(tmp_path: Path) -> None:
    with running_plane(tmp_path, ca_ttl=dt.timedelta(minutes=12)) as plane:
        control, clock, loop = plane.plane, plane.clock, plane.loop
        agent = plane.agent(tmp_path / "agent", plane.token("node-a"))
        assert control.ca is not None
        first_ca = control.ca.x509.active().certificate
        clock.advance(dt.timedelta(minutes=7))  # past half-life: the next CA is prepared
        loop.call(control.tick)
        loop.run(agent.sync())
        bundle = agent.cache.bundle()
        assert bundle is not None and len(bundle.x509_authorities) == 2
        assert all(i.svid.chain[1] == first_ca for i in agent.cache.identities)
        clock.advance(dt.timedelta(minutes=3, seconds=30))  # 1/6 left: the next CA signs
        loop.call(control.tick)
        loop.run(agent.sync())
        new_ca = control.ca.x509.active().certificate
        assert new_ca != first_ca
        assert all(i.svid.chain[1] == new_ca for i in agent.cache.identities)
        loop.run(agent.stop())


def test_agent_renews_its_node_svid_at_half_life_with_a_new_key(
    plane: Plane, tmp_path: Path
) -> None:
    data_dir = tmp_path / "agent"
    agent = plane.agent(data_dir, plane.token("node-a"))
    assert agent.node is not None
    before, old_key = agent.node.chain[0], (data_dir / "node.key").read_bytes()
    plane.clock.advance(dt.timedelta(minutes=31))
    plane.loop.run(agent.renew_node_if_due())
    assert agent.node.chain[0] != before
    assert (data_dir / "node.key").read_bytes() != old_key
    saved = x509.load_pem_x509_certificates((data_dir / "node-svid.pem").read_bytes())
    assert saved[0] == agent.node.chain[0]
    # (not followed by a call: the new SVID is valid from the test's moved clock, while the
    # server's TLS layer checks validity against the real one)
    plane.loop.run(agent.stop())


def test_a_workload_added_to_the_policies_reaches_the_agent_on_its_next_sync(
    plane: Plane, tmp_path: Path
) -> None:
    agent = plane.agent(tmp_path / "agent", plane.token("node-a"))
    policy = plane.plane.options.policies / "mesh.yaml"
    added = "\n---\napiVersion: meshwarden.io/v1alpha1\nkind: Workload\n"
    added += "metadata: {name: late, namespace: shop}\nspec: {selectors: ['unix:uid:0']}\n"
    policy.write_text(policy.read_text() + added)
    plane.loop.call(plane.plane.tick)
    plane.loop.run(agent.sync())
    ids = {str(i.spiffe_id) for i in agent.cache.identities}
    assert "spiffe://example.org/ns/shop/sa/late" in ids
    plane.loop.run(agent.stop())


def test_a_broken_policy_edit_keeps_the_last_good_registry(plane: Plane, tmp_path: Path) -> None:
    agent = plane.agent(tmp_path / "agent", plane.token("node-a"))
    policy = plane.plane.options.policies / "mesh.yaml"
    policy.write_text(policy.read_text() + "\n---\nkind: Workload\nspec: {nonsense: 1}\n")
    plane.loop.call(plane.plane.tick)
    plane.loop.run(agent.sync())
    assert sorted(str(i.spiffe_id) for i in agent.cache.identities) == sorted([API, ANYWHERE])
    plane.loop.run(agent.stop())


def test_intermediate_ca_under_an_upstream_root_serves_agents_end_to_end(tmp_path: Path) -> None:
    cert, key = tmp_path / "root.pem", tmp_path / "root.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "30",
            "-subj",
            "/O=Corp/CN=Corp Root",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        check=True,
        capture_output=True,
    )
    with running_plane(tmp_path, upstream_cert=cert, upstream_key=key) as plane:
        assert plane.roots == cert.read_bytes()
        agent = plane.agent(tmp_path / "agent", plane.token("node-a"))
        chain = agent.cache.identities[0].svid.chain
        assert (
            len(chain) == 2
            and chain[1].issuer == x509.load_pem_x509_certificate(cert.read_bytes()).subject
        )
        (tmp_path / "leaf.pem").write_bytes(chain[0].public_bytes(Encoding.PEM))
        (tmp_path / "mid.pem").write_bytes(chain[1].public_bytes(Encoding.PEM))
        verify = subprocess.run(
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-CAfile",
                str(cert),
                "-untrusted",
                str(tmp_path / "mid.pem"),
                str(tmp_path / "leaf.pem"),
            ],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        plane.loop.run(agent.stop())
