"""`extAuthz.transport: http` through a real Envoy 1.40: the sidecar's HTTP ext_authz filter asks
the engine's HTTP/1.1 front over mTLS with the sidecar's own SVID; a client cannot widen the
decision with a header naming another identity; the verdict never reaches the upstream as
headers; a front that does not answer fails closed. (Verdict-by-verdict agreement with the
evaluator, JWT claims included, is test_ext_authz_differential.py's http case.)"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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
    registered_workload,
    serve_http_on_loopback,
    workload_resources,
)
from meshwarden.xds._envoy import static_cluster, upstream_tls

from .._loopback import free_port as _free_port
from ._static_envoy import compile_docs as _compile
from ._static_envoy import http_ext_authz_documents
from ._static_envoy import write_svid as _write_svid
from .conftest import RunningEnvoy

TD = "example.org"
WORKLOAD = "a/w"
CALLER = f"spiffe://{TD}/ns/b/sa/caller"
OTHER = f"spiffe://{TD}/ns/b/sa/other"
AUTHZ_CLUSTER = "ext-authz-http-test"


def _documents(address: str, app_port: int) -> list[dict[str, Any]]:
    return http_ext_authz_documents(TD, address, app_port, CALLER)


class _Headers(BaseHTTPRequestHandler):
    """The upstream app: answers with the request headers it received, as JSON."""

    def do_GET(self) -> None:
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def app() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Headers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


class Identities:
    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
        self.bundle = folder / "bundle.pem"
        self.bundle.write_bytes(self.ca.bundle().x509_pem())
        self.folder = folder

    def svid(self, spiffe_id: str) -> tuple[str, str]:
        folder = self.folder / spiffe_id.rsplit("/", 1)[-1]
        folder.mkdir(exist_ok=True)
        chain, key = _write_svid(self.ca, spiffe_id, folder)
        return str(chain), str(key)

    def engine_tls(self) -> ssl.SSLContext:
        """The front's context: its own certificate, client certificates required."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(self.bundle))
        context.load_cert_chain(*self.svid(f"spiffe://{TD}/ns/cp/sa/control-plane"))
        return context


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    return Identities(tmp_path_factory.mktemp("ext-authz-http"))


Sidecar = Callable[[int, str], tuple[str, CompiledMesh]]


@pytest.fixture
def sidecar(
    envoy: Callable[[dict[str, Any]], RunningEnvoy], loopback: str, app: int, ids: Identities
) -> Sidecar:
    """(engine port, the SPIFFE ID the sidecar presents to the engine) → a running sidecar of
    a/w in ext-authz mode over HTTP, and its mesh."""

    def start(engine_port: int, presents: str) -> tuple[str, CompiledMesh]:
        compiled = _compile(_documents(loopback, app))
        chain, key = ids.svid(f"spiffe://{TD}/ns/a/sa/w")
        tls = StaticTls(chain, key, str(ids.bundle), TD)
        ctx = TranslationContext(
            static_tls=tls, inline_routes=True, ext_authz_http_cluster=AUTHZ_CLUSTER
        )
        resources = workload_resources(compiled, WORKLOAD, ctx)
        to_engine = static_cluster(AUTHZ_CLUSTER, "127.0.0.1", engine_port)
        client_chain, client_key = ids.svid(presents)
        certificate = {"certificateChain": {"filename": client_chain}}
        certificate["privateKey"] = {"filename": client_key}
        to_engine["transportSocket"] = upstream_tls(
            commonTlsContext={
                "tlsCertificates": [certificate],
                "validationContext": {"trustedCa": {"filename": str(ids.bundle)}},
            }
        )
        clusters = [*resources[CLUSTER], to_engine]
        envoy({"staticResources": {"listeners": resources[LISTENER], "clusters": clusters}})
        return loopback, compiled

    return start


def _get(
    address: str, cert: tuple[str, str] | None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    if cert is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(address, 8080, timeout=10)
    else:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.load_cert_chain(*cert)
        conn = http.client.HTTPSConnection(address, 8080, context=context, timeout=10)
    try:
        conn.request("GET", "/hello", headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def _engine_and_sidecar(
    sidecar: Sidecar, ids: Identities, presents: str
) -> Iterator[tuple[str, Authorization]]:
    """The engine's HTTP front over mTLS (the production resolver: the caller's certificate
    must be the workload's identity) and a sidecar presenting `presents` to it."""
    meshes: list[CompiledMesh] = []
    authorization = Authorization(registered_workload(lambda: meshes[0], lambda peer: peer))
    with serve_http_on_loopback(authorization, ids.engine_tls()) as port:
        address, compiled = sidecar(port, presents)
        meshes.append(compiled)
        yield address, authorization


def test_over_mtls_the_engine_decides_and_a_forged_identity_header_widens_nothing(
    sidecar: Sidecar, ids: Identities
) -> None:
    with _engine_and_sidecar(sidecar, ids, f"spiffe://{TD}/ns/a/sa/w") as (address, authz):
        status, body = _get(address, ids.svid(CALLER))
        assert status == 200
        upstream = json.loads(body)
        assert not {"decision", "policy", "rule"} & set(upstream), upstream
        forged = {
            "x-meshwarden-peer": f"={CALLER}",
            "x-meshwarden-source": "=10.9.9.9",
            "x-meshwarden-workload": "a/other",
        }
        assert _get(address, None, forged) == (403, b"ext_authz: access denied by default:deny")
        assert _get(address, ids.svid(OTHER), forged)[0] == 403
        assert _get(address, None, {"x-meshwarden-peer": CALLER})[0] == 403
    assert authz.checks == 4


def test_a_sidecar_whose_identity_is_not_the_workloads_gets_no_decision(
    sidecar: Sidecar, ids: Identities
) -> None:
    with _engine_and_sidecar(sidecar, ids, OTHER) as (address, _):  # another workload's SVID
        status, body = _get(address, ids.svid(CALLER))
        assert status == 403 and body.startswith(b"ext_authz: access denied by authz:unavailable")


@pytest.mark.parametrize("engine", ["silent", "absent"])
def test_an_engine_that_does_not_answer_fails_closed(
    sidecar: Sidecar, ids: Identities, engine: str
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1] if engine == "silent" else _free_port()
        address, _ = sidecar(port, f"spiffe://{TD}/ns/a/sa/w")
        assert _get(address, ids.svid(CALLER))[0] == 403
