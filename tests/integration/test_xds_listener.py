"""The control plane's sidecar listener (`server --xds-listen`): TLS ends in grpc's C core and
a client certificate from the mesh's trust bundle is required. A client without one, or with one
from another CA, fails the handshake; a valid workload SVID gets the configuration of its own
node only; after a CA rotation SVIDs from the new CA connect (with ADS clients over grpc)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    SERVER_DNS_NAME,
    CaConfig,
    CertificateAuthority,
    ManualClock,
    MtlsEndpoint,
    RotatingCredentials,
    SystemClock,
    generate_key,
    private_key_pkcs8_pem,
)
from meshwarden.xds import CLUSTER

from meshwarden._server import ControlPlane, ServerOptions

from .harness import LoopThread
from .test_node_attestation import API, POLICIES, Plane, running_plane

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
Svid = tuple[bytes, bytes]  # (key PEM, chain PEM)


def _sign(ca: CertificateAuthority, spiffe_id: str) -> Svid:
    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
    return private_key_pkcs8_pem(key), b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain)


def _svid(plane: Plane, spiffe_id: str = API) -> Svid:
    ca = plane.plane.ca
    assert ca is not None
    return plane.loop.call(lambda: _sign(ca, spiffe_id))


def _foreign(trust_domain: str, spiffe_id: str) -> Svid:
    return _sign(
        CertificateAuthority(CaConfig(TrustDomain(trust_domain)), SystemClock()), spiffe_id
    )


def _ads(plane: Plane, svid: Svid | None, node: str = "shop/api") -> DiscoveryResponse:
    """The first ADS response for `node`'s clusters, over a fresh connection."""
    key, chain = svid or (None, None)
    credentials = grpc.ssl_channel_credentials(plane.roots, key, chain)
    options = [("grpc.ssl_target_name_override", SERVER_DNS_NAME)]
    request = DiscoveryRequest(node=Node(id=node, cluster="shop"), type_url=CLUSTER)
    with grpc.secure_channel(plane.plane.xds_address, credentials, options) as channel:
        call = channel.stream_stream(
            ADS, request_serializer=bytes, response_deserializer=DiscoveryResponse.parse
        )
        return next(iter(call(iter([request]), timeout=10)))


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path) as running:
        yield running


def _streams(plane: Plane) -> int:
    return plane.loop.call(lambda: plane.plane.xds.cache.status("shop/api").streams)


def test_a_workload_svid_gets_its_nodes_configuration_and_its_expiry_is_recorded(
    plane: Plane,
) -> None:
    svid = _svid(plane)
    response = _ads(plane, svid)
    assert response.type_url == CLUSTER and response.version_info
    sidecar = plane.loop.call(plane.plane.xds.sidecars)["shop/api"]
    leaf = sidecar["svid"]
    assert leaf["spiffeId"] == API and leaf["presentedExpiry"] is not None
    assert plane.plane.xds_address != plane.address  # not the node API's port


@pytest.mark.parametrize(
    "client",
    [
        "no certificate",
        "another trust domain",
        "another CA claiming this trust domain and the workload's SPIFFE ID",
    ],
)
def test_a_client_without_an_svid_of_the_bundle_fails_the_handshake(
    plane: Plane, client: str
) -> None:
    svid = {
        "no certificate": None,
        "another trust domain": _foreign("other.org", "spiffe://other.org/ns/shop/sa/api"),
        "another CA claiming this trust domain and the workload's SPIFFE ID": _foreign(
            "example.org", API
        ),
    }[client]
    with pytest.raises(grpc.RpcError) as refused:
        _ads(plane, svid)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # no call reached the server
    assert _streams(plane) == 0


def test_a_valid_svid_claiming_another_workloads_node_is_refused(plane: Plane) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _ads(plane, _svid(plane), node="shop/db")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://example.org/ns/shop/sa/db" in str(refused.value.details())
    assert API in str(refused.value.details())


def test_after_a_ca_rotation_svids_of_the_new_ca_connect(tmp_path: Path) -> None:
    """The plane's clock starts 52 minutes back, so every certificate the moved clock mints is
    valid by the real one too (grpc's TLS checks validity against the real clock)."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "mesh.yaml").write_text(POLICIES)
    options = ServerOptions(
        tmp_path / "policies",
        tmp_path / "server",
        listen="127.0.0.1:0",
        ca_ttl=dt.timedelta(minutes=60),
    )
    clock = ManualClock(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=52))
    loop = LoopThread()
    control = ControlPlane(options, clock)
    try:
        plane = Plane(loop, control, clock, loop.run(control.start()))
        assert control.ca is not None
        first = control.ca.x509.active().certificate
        old = _svid(plane)
        clock.advance(dt.timedelta(minutes=31))  # past half-life: the next CA is prepared
        loop.call(control.tick)
        clock.advance(dt.timedelta(minutes=20))  # 1/6 left: the next CA signs
        loop.call(control.tick)
        assert control.ca.x509.active().certificate != first
        new = _svid(plane)
        assert x509.load_pem_x509_certificates(new[1])[1] == control.ca.x509.active().certificate
        assert _ads(plane, new).version_info
        assert _ads(plane, old).version_info  # the old CA is still in the bundle
    finally:
        loop.run(control.stop())
        loop.close()


def test_new_roots_and_a_new_server_certificate_apply_to_the_next_handshake() -> None:
    """`RotatingCredentials.update`: a CA removed from the roots is refused on the next
    connection (open ones keep theirs), a CA added is accepted, and the next handshake presents
    the renewed server certificate."""
    kept = CertificateAuthority(CaConfig(TrustDomain("example.org")), SystemClock())
    removed = CertificateAuthority(CaConfig(TrustDomain("example.org")), SystemClock())
    added = CertificateAuthority(CaConfig(TrustDomain("example.org")), SystemClock())

    def server_pem(ca: CertificateAuthority) -> tuple[bytes, bytes]:
        key = generate_key()
        chain = ca.sign_server_svid(key.public_key()).chain
        return private_key_pkcs8_pem(key), b"".join(c.public_bytes(Encoding.PEM) for c in chain)

    def roots(*cas: CertificateAuthority) -> bytes:
        return b"".join(ca.bundle().x509_pem() for ca in cas)

    key, chain = server_pem(kept)
    credentials = RotatingCredentials(key, chain, roots(kept, removed))
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    handler = grpc.method_handlers_generic_handler("t.Echo", {"Call": echo})
    endpoint = MtlsEndpoint(
        "127.0.0.1", 0, credentials, lambda s: s.add_generic_rpc_handlers((handler,))
    )
    loop = LoopThread()

    def call(client: CertificateAuthority, trusted: bytes) -> bytes:
        client_key, client_chain = _sign(client, API)
        channel_credentials = grpc.ssl_channel_credentials(trusted, client_key, client_chain)
        options = [("grpc.ssl_target_name_override", SERVER_DNS_NAME)]
        target = f"127.0.0.1:{endpoint.port}"
        with grpc.secure_channel(target, channel_credentials, options) as channel:
            return bytes(channel.unary_unary("/t.Echo/Call")(b"hi", timeout=10))

    try:
        loop.run(endpoint.start())
        assert call(removed, roots(kept)) == b"hi"
        credentials.update(roots_pem=roots(kept, added))
        with pytest.raises(grpc.RpcError) as refused:
            call(removed, roots(kept))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert call(added, roots(kept)) == b"hi"
        new_key, renewed = server_pem(added)
        credentials.update(key_pem=new_key, chain_pem=renewed)
        with pytest.raises(grpc.RpcError):  # the client trusts only the old server CA
            call(kept, roots(kept))
        assert call(kept, roots(added)) == b"hi"
    finally:
        loop.run(endpoint.stop(0))
        loop.close()
