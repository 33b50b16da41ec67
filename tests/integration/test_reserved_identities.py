"""A Workload registered under a reserved SPIFFE ID gets nothing from the node API, and a
certificate that only looks like a node SVID (a node path, signed by the mesh's CA, but not issued
through attestation) cannot act as a node. A real control plane over TLS, real grpc clients."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    IssuedNodes,
    JoinTokens,
    ServerTls,
    SystemClock,
    TlsEndpoint,
    generate_key,
    node_api_services,
    private_key_pkcs8_pem,
    write_file,
)
from meshwarden.identities._node_client import (
    NodeCredentials,
    attest,
    make_csr,
    node_stub,
    open_channel,
)
from meshwarden.protos import node_pb2 as pb

from .harness import LoopThread
from .test_node_attestation import API, Plane, running_plane

TD = TrustDomain("example.org")


@dataclass(frozen=True)
class _Workload:
    namespace: str
    name: str
    spiffe_id: SpiffeId
    selectors: tuple[str, ...] = ("unix:uid:0",)


@dataclass(frozen=True)
class _Registry:
    """A registry as `check` accepted it before reserved IDs were refused there."""

    trust_domain: TrustDomain
    workloads: tuple[_Workload, ...]


@dataclass
class NodeApiUnderTest:
    loop: LoopThread
    ca: CertificateAuthority
    tokens: JoinTokens
    address: str

    @property
    def roots(self) -> bytes:
        return bytes(self.ca.bundle().x509_pem())


@contextlib.contextmanager
def node_api(tmp_path: Path, registry: _Registry) -> Iterator[NodeApiUnderTest]:
    """The node API (and its CA, join tokens, record of issued nodes) serving `registry`."""
    clock = SystemClock()
    ca, tokens = CertificateAuthority(CaConfig(TD), clock), JoinTokens(clock)
    key = generate_key()
    server = ca.sign_server_svid(key.public_key())
    write_file(tmp_path / "server.key", private_key_pkcs8_pem(key))
    write_file(
        tmp_path / "server.pem", b"".join(c.public_bytes(Encoding.PEM) for c in server.chain)
    )
    tls = ServerTls(tmp_path / "server.pem", tmp_path / "server.key", ca.bundle().x509_pem())
    nodes = IssuedNodes(tmp_path / "nodes.json", clock)
    services = node_api_services(ca, tokens, lambda: registry, nodes)
    endpoint = TlsEndpoint("127.0.0.1", 0, tls, services)
    loop = LoopThread()
    try:
        loop.run(endpoint.start())
        yield NodeApiUnderTest(loop, ca, tokens, f"127.0.0.1:{endpoint.port}")
    finally:
        loop.run(endpoint.stop(0))
        loop.close()


@pytest.mark.parametrize(
    "reserved",
    ["spiffe://example.org/meshwarden/node/node-b", "spiffe://example.org/meshwarden/server"],
)
def test_a_workload_with_a_reserved_id_gets_no_svid_from_the_node_api(
    tmp_path: Path, reserved: str
) -> None:
    rogue = _Workload("shop", "rogue", SpiffeId.parse(reserved))
    with node_api(tmp_path, _Registry(TD, (rogue,))) as api:
        token = api.tokens.create("node-a")
        node = api.loop.run(attest(api.address, api.roots, token))

        async def ask() -> tuple[pb.X509SVIDResult, grpc.aio.AioRpcError]:
            async with open_channel(api.address, api.roots, node) as channel:
                stub = node_stub(channel)
                synced = await stub.Sync(pb.SyncRequest(), timeout=10)
                assert [w.spiffe_id for w in synced.workloads] == [reserved]
                request = pb.X509SVIDRequest(spiffe_id=reserved, csr=make_csr(generate_key()))
                x509_svids = await stub.SignX509SVIDs(pb.SignX509SVIDsRequest(requests=[request]))
                jwt = pb.SignJWTSVIDRequest(spiffe_id=reserved, audience=["db"])
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.SignJWTSVID(jwt, timeout=10)
                return x509_svids.results[0], refused.value

        x509_result, jwt_refusal = api.loop.run(ask())
    assert not x509_result.svid_chain and "reserved for the mesh itself" in x509_result.error
    assert jwt_refusal.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "reserved for the mesh itself" in str(jwt_refusal.details())


def _forged_node(plane: Plane, node: str) -> NodeCredentials:
    """A certificate the CA signed with a node path, outside attestation (what a workload got
    when the CA still signed reserved IDs, or what an upstream CA could sign)."""
    assert plane.plane.ca is not None
    key = generate_key()
    svid = plane.plane.ca._sign_x509(
        key.public_key(), SpiffeId.parse(f"spiffe://{TD}/meshwarden/node/{node}"), None
    )
    return NodeCredentials(key, svid.chain, plane.plane.ca.bundle())


def _call(loop: LoopThread, address: str, roots: bytes, node: NodeCredentials) -> grpc.StatusCode:
    async def sync_and_sign() -> grpc.StatusCode:
        async with open_channel(address, roots, node) as channel:
            stub = node_stub(channel)
            request = pb.X509SVIDRequest(spiffe_id=API, csr=make_csr(generate_key()))
            try:
                await stub.Sync(pb.SyncRequest(), timeout=10)
                await stub.SignX509SVIDs(pb.SignX509SVIDsRequest(requests=[request]), timeout=10)
                await stub.RenewNodeSVID(pb.RenewNodeSVIDRequest(csr=make_csr(generate_key())))
            except grpc.aio.AioRpcError as exc:
                assert "not a node SVID issued by attestation" in str(exc.details())
                return exc.code()
            return grpc.StatusCode.OK

    return loop.run(sync_and_sign())


def test_a_ca_signed_certificate_with_a_node_path_cannot_act_as_a_node(tmp_path: Path) -> None:
    with running_plane(tmp_path) as plane:
        forged = _forged_node(plane, "node-a")
        assert _call(plane.loop, plane.address, plane.roots, forged) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


def test_an_attested_node_is_still_known_after_a_server_restart(tmp_path: Path) -> None:
    with running_plane(tmp_path) as plane:
        node = plane.loop.run(attest(plane.address, plane.roots, plane.token("node-a")))
    with running_plane(tmp_path) as plane:
        assert _call(plane.loop, plane.address, plane.roots, node) == grpc.StatusCode.OK
        renewed = node  # the record grows with renewals: the renewed SVID is a node too

        async def renew() -> NodeCredentials:
            async with open_channel(plane.address, plane.roots, renewed) as channel:
                response = await node_stub(channel).RenewNodeSVID(
                    pb.RenewNodeSVIDRequest(csr=make_csr(key)), timeout=10
                )
            return NodeCredentials.from_response(key, response)

        key = generate_key()
        fresh = plane.loop.run(renew())
        assert fresh.chain[0] != node.chain[0]
        assert _call(plane.loop, plane.address, plane.roots, fresh) == grpc.StatusCode.OK
