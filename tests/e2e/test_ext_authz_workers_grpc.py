"""`meshwarden server --ext-authz-workers 1` and a real Envoy 1.40 sidecar bootstrapped with the
ext_authz front's port, under a Mesh with the default `extAuthz.transport: grpc`: the ext_authz
filters of its HTTP port and of its tcp port send gRPC Check to the front's h2 cluster (the one
`bootstrap(..., ext_authz_http_port=...)` declares, its SDS secrets swapped for the same SVID's
files), the worker process answers every check (its /healthz count; the control plane's own
Check over ADS is not even in the sidecar's configuration), and requests are allowed and denied
as the engine decides, with the worker's decision spans."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from meshwarden.engine import TrustDomain
from meshwarden.identities import CaConfig, SystemClock, load_ca
from meshwarden.xds import (
    CLUSTER,
    EXT_AUTHZ_GRPC_CLUSTER,
    LISTENER,
    StaticTls,
    TranslationContext,
    bootstrap,
    workload_resources,
)

from meshwarden.demo import OtlpReceiver, otlp_receiver, sample_apps

from .._loopback import free_port
from ._static_envoy import compile_docs, http_ext_authz_documents
from .conftest import RunningEnvoy
from .test_ext_authz_workers import (
    CALLER,
    OTHER,
    SIDECAR_ID,
    TD,
    WORKLOAD,
    Plane,
    _current,
    _current_worker,
    _decision_spans,
    _running,
    _status,
    _wait,
)

PING = b"ping, sidecar"


def _documents(address: str, app_port: int, echo_port: int) -> list[dict[str, Any]]:
    """a/w, which only CALLER may call, on an HTTP port and a tcp port, over gRPC Check."""
    docs = http_ext_authz_documents(TD, address, app_port, CALLER)
    docs[0]["spec"]["extAuthz"] = {"timeout": "2s"}  # transport: grpc, the default
    docs[1]["spec"]["ports"].append({"port": 9000, "targetPort": echo_port, "protocol": "tcp"})
    return docs


@pytest.fixture
def apps() -> Iterator[tuple[int, int]]:
    """(an HTTP app's port, a tcp echo's port)."""
    ports = free_port(), free_port()
    with sample_apps([ports[0]], [ports[1]]):
        yield ports


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture
def plane(
    tmp_path: Any, loopback: str, apps: tuple[int, int], collector: OtlpReceiver
) -> Iterator[Plane]:
    with _running(tmp_path, _documents(loopback, *apps), collector.endpoint) as running:
        yield running


def _front_cluster(plane: Plane, chain: str, key: str, bundle: str) -> dict[str, Any]:
    """The bootstrap's h2 cluster to the front, with files where SDS would serve the SVID."""
    config = bootstrap(
        WORKLOAD, "127.0.0.1", 1, "/sds.sock", trust_domain=TD, ext_authz_http_port=plane.front_port
    )
    [cluster] = [
        c for c in config["staticResources"]["clusters"] if c["name"] == EXT_AUTHZ_GRPC_CLUSTER
    ]
    common = cluster["transportSocket"]["typedConfig"]["commonTlsContext"]
    del common["tlsCertificateSdsSecretConfigs"]
    common["tlsCertificates"] = [
        {"certificateChain": {"filename": chain}, "privateKey": {"filename": key}}
    ]
    validation = common.pop("combinedValidationContext")["defaultValidationContext"]
    common["validationContext"] = {**validation, "trustedCa": {"filename": bundle}}
    return dict(cluster)


def _sidecar(
    envoy: Callable[[dict[str, Any]], RunningEnvoy], plane: Plane, loopback: str, docs: Any
) -> None:
    chain, key = plane.svid(SIDECAR_ID)
    bundle = plane.data / "bundle.pem"
    ca = load_ca(plane.data / "ca.json", CaConfig(TrustDomain(TD)), SystemClock())
    bundle.write_bytes(ca.bundle().x509_pem())
    ctx = TranslationContext(
        static_tls=StaticTls(chain, key, str(bundle), TD),
        inline_routes=True,
        ext_authz_cluster="not-a-cluster",  # Envoy would refuse a filter naming it
        ext_authz_grpc_cluster=EXT_AUTHZ_GRPC_CLUSTER,
        ext_authz_grpc_declared=lambda workload: workload == WORKLOAD,
    )
    resources = workload_resources(compile_docs(docs), WORKLOAD, ctx)
    clusters = [*resources[CLUSTER], _front_cluster(plane, chain, key, str(bundle))]
    envoy({"staticResources": {"listeners": resources[LISTENER], "clusters": clusters}})


def _echo(address: str, cert: tuple[str, str]) -> bytes:
    """What the tcp port echoes back over mTLS (b"" when the sidecar closed the connection)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(*cert)
    with (
        socket.create_connection((address, 9000), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        try:
            tls.sendall(PING)
            return tls.recv(64)
        except (ConnectionResetError, ssl.SSLError):
            return b""


def test_a_sidecar_with_the_front_sends_grpc_check_to_the_worker_on_both_ports(
    envoy: Callable[[dict[str, Any]], RunningEnvoy],
    plane: Plane,
    loopback: str,
    apps: tuple[int, int],
    collector: OtlpReceiver,
) -> None:
    _sidecar(envoy, plane, loopback, _documents(loopback, *apps))
    _wait(lambda: _current(plane), "the worker decides with the control plane's policies")
    caller, other = plane.svid(CALLER), plane.svid(OTHER)
    assert _status(loopback, caller) == (200, f"{apps[0]}: GET /\n".encode())
    status, body = _status(loopback, other)
    assert (status, body) == (403, b"ext_authz: access denied by default:deny")
    assert _echo(loopback, caller) == b"echo " + PING
    assert _echo(loopback, other) == b""
    _wait(
        lambda: (_current_worker(plane) or {"checks": None})["checks"] == 4,
        "the worker counted the four checks",
    )
    spans = _wait(
        lambda: sorted(found) if len(found := _decision_spans(collector)) == 4 else None,
        "the worker's decision spans",
    )
    assert spans == [("allow", CALLER), ("allow", CALLER), ("deny", OTHER), ("deny", OTHER)]
