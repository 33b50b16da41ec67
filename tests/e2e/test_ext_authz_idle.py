"""Idle connections between a real Envoy 1.40 sidecar and the engine's ext_authz front, over
both of the front's clusters as `bootstrap(..., ext_authz_http_port=...)` writes them
(HTTP/1.1 for `extAuthz.transport: http`, h2 for gRPC Check): the sidecar closes its idle
pooled connection itself (`idleTimeout`, `EXT_AUTHZ_HTTP_IDLE_SECONDS`), long before the
front's own idle timeout would, so the front never closes one under a check the sidecar is
sending; and the next request's check, on a new connection, is answered. (The front ending a
peer that stays idle: tests/unit/xds/test_ext_authz_h2.py.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.identities import generate_key, private_key_pkcs8_pem
from meshwarden.xds import (
    CLUSTER,
    EXT_AUTHZ_FRONT_IDLE_SECONDS,
    EXT_AUTHZ_GRPC_CLUSTER,
    EXT_AUTHZ_HTTP_CLUSTER,
    LISTENER,
    Authorization,
    AuthzHttpFront,
    StaticTls,
    TranslationContext,
    bootstrap,
    front_tls,
    registered_workload,
    serve_authz_http,
    workload_resources,
)

from ._static_envoy import compile_docs, http_ext_authz_documents
from .conftest import RunningEnvoy
from .test_ext_authz_http import CALLER, TD, WORKLOAD, Identities, _get, app, ids

__all__ = ["app", "ids"]  # fixtures
IDLE_SECONDS = 4 * EXT_AUTHZ_FRONT_IDLE_SECONDS  # the front's, here


def _server_certificate(ids: Identities) -> tuple[Path, Path]:
    """The control plane's certificate (`.../meshwarden/server`, which the bootstrap's clusters
    to the front require)."""
    key = generate_key()
    svid = ids.ca.sign_server_svid(key.public_key())
    chain, key_file = ids.folder / "server-chain.pem", ids.folder / "server-key.pem"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
    key_file.write_bytes(private_key_pkcs8_pem(key))
    return chain, key_file


class Front:
    """The engine's front over mTLS (ALPN h2 and HTTP/1.1) on its own loop in a thread."""

    def __init__(self, ids: Identities, docs: list[dict[str, Any]]) -> None:
        compiled = compile_docs(docs)
        authorization = Authorization(registered_workload(lambda: compiled, lambda peer: peer))
        # four times its default: on a loaded host the sidecar's close may take a
        # while to reach the front, and the front must not end the connection meanwhile
        self.front = AuthzHttpFront(authorization, idle_seconds=IDLE_SECONDS)
        tls = front_tls(*_server_certificate(ids), ids.bundle.read_bytes())
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        serving = serve_authz_http(self.front, "127.0.0.1", 0, tls.listening)
        self.server = asyncio.run_coroutine_threadsafe(serving, self.loop).result(10)
        self.port = int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _documents(address: str, app_port: int, transport: str) -> list[dict[str, Any]]:
    docs = http_ext_authz_documents(TD, address, app_port, CALLER)
    docs[0]["spec"]["extAuthz"] = {"transport": transport, "timeout": "2s"}
    return docs


def _front_cluster(name: str, port: int, ids: Identities, chain: str, key: str) -> dict[str, Any]:
    """The bootstrap's cluster `name` to the front, with files where SDS would serve the SVID."""
    config = bootstrap(
        WORKLOAD, "127.0.0.1", 1, "/sds.sock", trust_domain=TD, ext_authz_http_port=port
    )
    [cluster] = [c for c in config["staticResources"]["clusters"] if c["name"] == name]
    common = cluster["transportSocket"]["typedConfig"]["commonTlsContext"]
    del common["tlsCertificateSdsSecretConfigs"]
    common["tlsCertificates"] = [
        {"certificateChain": {"filename": chain}, "privateKey": {"filename": key}}
    ]
    validation = common.pop("combinedValidationContext")["defaultValidationContext"]
    common["validationContext"] = {**validation, "trustedCa": {"filename": str(ids.bundle)}}
    return dict(cluster)


@pytest.fixture(params=["http", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def front(ids: Identities, loopback: str, app: int, transport: str) -> Iterator[Front]:
    running = Front(ids, _documents(loopback, app, transport))
    try:
        yield running
    finally:
        running.close()


def _sidecar(
    envoy: Callable[[dict[str, Any]], RunningEnvoy],
    front: Front,
    ids: Identities,
    docs: list[dict[str, Any]],
    transport: str,
) -> tuple[RunningEnvoy, str]:
    """A sidecar of a/w whose ext_authz filter asks the front over the bootstrap's cluster of
    `transport`; the cluster's name."""
    chain, key = ids.svid(f"spiffe://{TD}/ns/a/sa/w")
    name = EXT_AUTHZ_HTTP_CLUSTER if transport == "http" else EXT_AUTHZ_GRPC_CLUSTER
    ctx = TranslationContext(
        static_tls=StaticTls(chain, key, str(ids.bundle), TD),
        inline_routes=True,
        ext_authz_cluster="not-a-cluster",  # Envoy would refuse a filter naming it
        ext_authz_http_cluster=EXT_AUTHZ_HTTP_CLUSTER,
        ext_authz_grpc_cluster=EXT_AUTHZ_GRPC_CLUSTER,
        ext_authz_grpc_declared=lambda workload: workload == WORKLOAD,
    )
    resources = workload_resources(compile_docs(docs), WORKLOAD, ctx)
    clusters = [*resources[CLUSTER], _front_cluster(name, front.port, ids, chain, key)]
    running = envoy({"staticResources": {"listeners": resources[LISTENER], "clusters": clusters}})
    deadline = time.monotonic() + 60
    while running.stat(f"cluster.{name}.membership_healthy") != 1:  # its name resolved
        assert time.monotonic() < deadline, running.log_text()[-3000:]
        time.sleep(0.05)
    return running, name


def test_the_sidecar_closes_its_idle_connection_to_the_front_first_and_checks_go_on(
    envoy: Callable[[dict[str, Any]], RunningEnvoy],
    front: Front,
    ids: Identities,
    loopback: str,
    app: int,
    transport: str,
) -> None:
    sidecar, cluster = _sidecar(envoy, front, ids, _documents(loopback, app, transport), transport)
    assert _get(loopback, ids.svid(CALLER))[0] == 200
    assert sidecar.stat(f"cluster.{cluster}.upstream_cx_total") == 1
    deadline = time.monotonic() + IDLE_SECONDS * 0.75
    while front.front.connections:  # open until the sidecar lets it go
        assert time.monotonic() < deadline, "the sidecar kept its idle connection to the front"
        time.sleep(0.1)
    assert front.front.idle_ended == 0  # closed by the sidecar, not under it
    assert sidecar.stat(f"cluster.{cluster}.upstream_cx_idle_timeout") == 1
    assert _get(loopback, ids.svid(CALLER))[0] == 200  # the next check, on a new connection
    assert sidecar.stat(f"cluster.{cluster}.upstream_cx_total") == 2
