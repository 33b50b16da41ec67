"""ext_authz enforcement through a real Envoy: HTTP and tcp ports ask the engine; an engine that
does not answer fails closed (403, connection closed) unless the Mesh says `failOpen`."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from meshwarden.engine import CompiledMesh, TrustDomain
from meshwarden.identities import CaConfig, CertificateAuthority, SystemClock
from meshwarden.xds import (
    CLUSTER,
    LISTENER,
    Authorization,
    StaticTls,
    TranslationContext,
    loopback_cluster,
    serve_on_loopback,
    workload_resources,
)

from meshwarden.demo import sample_apps

from .._loopback import free_port as _free_port
from ._static_envoy import compile_docs as _compile
from ._static_envoy import write_svid as _write_svid
from .conftest import RunningEnvoy

TD = "example.org"
WORKLOAD = "a/w"
ALLOWED_SOURCE, OTHER_SOURCE = "127.0.0.1", "127.0.0.2"
AUTHZ_CLUSTER = "ext-authz-test"
PING = b"ping, sidecar"


def _documents(
    address: str, http_port: int, echo_port: int, fail_open: bool
) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "kind": "Mesh",
            "metadata": {"name": "m"},
            "spec": {
                "trustDomain": TD,
                "mtls": "PERMISSIVE",
                "enforcement": "ext-authz",
                # 10 s: a check answered in Python on a loaded host can take over 500 ms, and
                # Envoy then fails closed (nothing listening fails at once either way)
                "extAuthz": {"failOpen": fail_open, "timeout": "10s"},
            },
        },
        {
            "kind": "Workload",
            "metadata": {"name": "w", "namespace": "a", "labels": {"app": "w"}},
            "spec": {
                "addresses": [address],
                "ports": [
                    {"port": 8080, "targetPort": http_port, "protocol": "http"},
                    {"port": 9000, "targetPort": echo_port, "protocol": "tcp"},
                ],
            },
        },
        {
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "local-only", "namespace": "a"},
            "spec": {
                "selector": {"matchLabels": {"app": "w"}},
                "rules": [{"from": [{"ipBlocks": [f"{ALLOWED_SOURCE}/32"]}]}],
            },
        },
    ]
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    return docs


@pytest.fixture(scope="module")
def apps() -> Iterator[tuple[int, int]]:
    http_port, echo_port = _free_port(), _free_port()
    with sample_apps([http_port], [echo_port]):
        yield http_port, echo_port


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> StaticTls:
    folder = tmp_path_factory.mktemp("ext-authz-tls")
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    (folder / "bundle.pem").write_bytes(ca.bundle().x509_pem())
    chain, key = _write_svid(ca, f"spiffe://{TD}/ns/a/sa/w", folder)
    return StaticTls(chain, key, str(folder / "bundle.pem"), TD)


Sidecar = Callable[[bool, int], tuple[str, CompiledMesh]]


@pytest.fixture
def sidecar(
    envoy: Callable[[dict[str, Any]], RunningEnvoy],
    loopback: str,
    apps: tuple[int, int],
    tls: StaticTls,
) -> Sidecar:
    """(fail_open, engine port) → a running ext-authz sidecar's address and its mesh."""

    def start(fail_open: bool, engine_port: int) -> tuple[str, CompiledMesh]:
        compiled = _compile(_documents(loopback, *apps, fail_open))
        ctx = TranslationContext(
            static_tls=tls, inline_routes=True, ext_authz_cluster=AUTHZ_CLUSTER
        )
        resources = workload_resources(compiled, WORKLOAD, ctx)
        clusters = [*resources[CLUSTER], loopback_cluster(AUTHZ_CLUSTER, engine_port)]
        envoy({"staticResources": {"listeners": resources[LISTENER], "clusters": clusters}})
        return loopback, compiled

    return start


def _http(address: str, source: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address, 8080, source_address=(source, 0), timeout=10)
    try:
        conn.request("GET", "/hello")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _echo(address: str, source: str) -> bytes:
    """What the tcp port echoes back (b"" when the sidecar closed the connection). TLS inspector
    needs five bytes to tell plaintext from TLS."""
    with socket.create_connection((address, 9000), timeout=10, source_address=(source, 0)) as s:
        try:
            s.sendall(PING)
            return s.recv(64)
        except ConnectionResetError:
            return b""


def test_http_and_tcp_ports_enforce_the_engines_verdict(sidecar: Sidecar) -> None:
    meshes: list[CompiledMesh] = []
    authorization = Authorization(lambda context, metadata: meshes[0].plan(WORKLOAD))
    with serve_on_loopback(authorization) as port:
        address, compiled = sidecar(False, port)
        meshes.append(compiled)
        assert _http(address, ALLOWED_SOURCE)[0] == 200
        status, body = _http(address, OTHER_SOURCE)
        assert (status, body) == (403, b"ext_authz: access denied by default:deny")
        assert _echo(address, ALLOWED_SOURCE) == b"echo " + PING
        assert _echo(address, OTHER_SOURCE) == b""
    assert authorization.checks == 4


def test_an_engine_that_does_not_answer_fails_closed(sidecar: Sidecar) -> None:
    address, _ = sidecar(False, _free_port())  # nothing listens there
    assert _http(address, ALLOWED_SOURCE)[0] == 403
    assert _echo(address, ALLOWED_SOURCE) == b""


def test_fail_open_lets_requests_through_when_the_engine_does_not_answer(
    sidecar: Sidecar,
) -> None:
    address, _ = sidecar(True, _free_port())
    assert _http(address, OTHER_SOURCE)[0] == 200
    assert _echo(address, OTHER_SOURCE) == b"echo " + PING
