"""gRPC `Check` on an ext_authz worker's front (ALPN h2 on the TLS port of the HTTP/1.1 front):
a grpcio client over mTLS, as the sidecar of the workload it names, gets the verdicts of the
conformance cases below (their hand-written `expect`) from the worker process and from the
control plane's own Check servicer (grpc.aio on the sidecars' listener) alike; a caller whose
SVID is not the named workload's is denied over h2 as over HTTP/1.1."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography.hazmat.primitives.serialization import Encoding
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    CheckRequest,
    CheckResponse,
)
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    SERVER_DNS_NAME,
    CaConfig,
    CertificateAuthority,
    MtlsEndpoint,
    RotatingCredentials,
    SystemClock,
    generate_key,
    private_key_pkcs8_pem,
)

from meshwarden._authz_workers import AuthzWorkers, WorkerFiles
from meshwarden._policies import Policies
from meshwarden._xds import MeshXds

CASES = Path(__file__).parents[1] / "conformance" / "cases"
PICKED = (  # HTTP requests to shop/backend-1:8080 deciding by identity, method and header
    "004-allow-rule-matches",
    "010-deny-beats-allow",
    "114-when-header-values",
    "083-not-methods",
)
CHECK = "/envoy.service.auth.v3.Authorization/Check"
Pem = tuple[bytes, bytes]  # (key, chain)


def _pem(key: Any, svid: Any) -> Pem:
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain)
    return private_key_pkcs8_pem(key), chain


def _workload_svid(ca: CertificateAuthority, spiffe_id: str) -> Pem:
    key = generate_key()
    return _pem(key, ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id)))


def _server_files(ca: CertificateAuthority, folder: Path) -> tuple[Path, Path]:
    key = generate_key()
    key_pem, chain_pem = _pem(key, ca.sign_server_svid(key.public_key()))
    folder.mkdir()
    chain, key_file = folder / "server.pem", folder / "server.key"
    chain.write_bytes(chain_pem)
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    return chain, key_file


def _case(name: str, policies: Path) -> dict[str, Any]:
    """The case's request and expectation; its policy files become the policies directory's."""
    for old in policies.glob("*.yaml"):
        old.unlink()
    for source in (CASES / name).glob("*.yaml"):
        if source.name != "case.yaml":
            shutil.copy(source, policies / source.name)
    return dict(yaml.safe_load((CASES / name / "case.yaml").read_text()))


def _check_request(request: dict[str, Any], principal: str) -> CheckRequest:
    """What the sidecar of `request["to"]` sends for the request (explain's defaults: GET /)."""
    http = AttributeContextHttpRequest(
        method=request.get("method", "GET"),
        path=request.get("path", "/"),
        host=f"backend:{request['port']}",
        headers=dict(request.get("headers", {})),
    )
    address = Address(socket_address=SocketAddress(address="127.0.0.9", port_value=40000))
    return CheckRequest(
        attributes=AttributeContext(
            source=AttributeContextPeer(principal=principal, address=address),
            request=AttributeContextRequest(http=http),
        )
    )


async def _verdict(
    address: str, roots: bytes, svid: Pem, check: CheckRequest, metadata: Sequence[tuple[str, str]]
) -> tuple[str, str, int | None]:
    """(decision, policy, rule) of the CheckResponse's dynamic metadata, over mTLS (ALPN h2)."""
    credentials = grpc.ssl_channel_credentials(roots, *svid)
    options = [("grpc.ssl_target_name_override", SERVER_DNS_NAME)]
    async with grpc.aio.secure_channel(address, credentials, options) as channel:
        call = channel.unary_unary(
            CHECK, request_serializer=bytes, response_deserializer=CheckResponse.parse
        )
        response = await call(check, metadata=tuple(metadata), timeout=10)
    assert response.dynamic_metadata is not None
    answered = response.dynamic_metadata.to_dict()
    rule = answered.get("rule")
    return answered["decision"], answered["policy"], None if rule is None else int(rule)


def _expected(case: dict[str, Any]) -> tuple[str, str, int | None]:
    expect = case["expect"]
    return str(expect["decision"]).lower(), expect["policy"], expect["rule"]


async def _http1_policy(port: int, svid: Pem, tmp: Path, workload: str, caller: str) -> bytes:
    """The verdict header `policy` the HTTP/1.1 front answers one check with."""
    (tmp / "c.key").write_bytes(svid[0])
    (tmp / "c.pem").write_bytes(svid[1])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(tmp / "c.pem", tmp / "c.key")
    context.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(
        f"GET /meshwarden.authz/check/ HTTP/1.1\r\nhost: backend:8080\r\ncontent-length: 0\r\n"
        f"x-meshwarden-workload: {workload}\r\nx-meshwarden-port: 8080\r\n"
        f"x-meshwarden-peer: ={caller}\r\nx-meshwarden-source: =127.0.0.9\r\n"
        "x-meshwarden-jwt: =\r\nconnection: close\r\n\r\n".encode()
    )
    answer = await reader.read()
    writer.close()
    return answer.split(b"\r\npolicy: ")[1].split(b"\r\n")[0]


def test_a_worker_answers_grpc_check_as_the_control_planes_servicer(tmp_path: Path) -> None:
    ca = CertificateAuthority(CaConfig(TrustDomain("example.org")), SystemClock())
    roots = ca.bundle().x509_pem()
    chain, key = _server_files(ca, tmp_path / "server")
    folder = tmp_path / "policies"
    folder.mkdir()
    cases = [_case(PICKED[0], folder)]
    policies = Policies(folder, settle=0)
    policies.reload_when_settled()
    plane = MeshXds(policies)
    servicer = MtlsEndpoint(
        "127.0.0.1",
        0,
        RotatingCredentials(key.read_bytes(), chain.read_bytes(), roots),
        plane.add_to,
    )
    workers = AuthzWorkers(
        1, ("127.0.0.1", 0), WorkerFiles(chain, key), str(folder), lambda *_: None
    )

    async def ask(address: str, case: dict[str, Any]) -> tuple[str, str, int | None]:
        assert policies.mesh is not None
        request = case["request"]
        registry = policies.mesh.registry.workloads
        sidecar = _workload_svid(ca, registry[request["to"]].identity)
        caller = request.get("from") or registry[request["from_workload"]].identity
        metadata = (("x-meshwarden-workload", request["to"]), ("x-meshwarden-port", "8080"))
        return await _verdict(address, roots, sidecar, _check_request(request, caller), metadata)

    async def scenario() -> list[Any]:
        assert policies.mesh is not None
        await servicer.start()
        port = await workers.start(roots, policies.contents, policies.mesh.version)
        answers = []
        for n, name in enumerate(PICKED):
            if n:
                cases.append(_case(name, folder))
                policies.reload_when_settled()
                assert policies.mesh is not None
                workers.publish(policies.contents, policies.mesh.version)
                async with asyncio.timeout(180):  # it compiles at nice 19: slow on a busy host
                    while not workers.current:
                        await asyncio.sleep(0.05)
            case = cases[-1]
            worker = await ask(f"127.0.0.1:{port}", case)
            control_plane = await ask(f"127.0.0.1:{servicer.port}", case)
            answers.append((worker, control_plane))
        # the frontend's SVID naming the backend's sidecar: refused over h2 and HTTP/1.1
        impostor = _workload_svid(ca, "spiffe://example.org/ns/shop/sa/frontend")
        check = _check_request(cases[0]["request"], "spiffe://example.org/ns/shop/sa/frontend")
        named = (("x-meshwarden-workload", "shop/backend-1"), ("x-meshwarden-port", "8080"))
        refused = [
            await _verdict(f"127.0.0.1:{port}", roots, impostor, check, named),
            await _verdict(f"127.0.0.1:{servicer.port}", roots, impostor, check, named),
            await _http1_policy(
                port, impostor, tmp_path, "shop/backend-1", "spiffe://example.org/ns/shop/sa/x"
            ),
        ]
        async with asyncio.timeout(60):  # the worker reports its checks every half second
            while (counted := workers.status()[0]["checks"]) < 3:
                await asyncio.sleep(0.05)
        await workers.stop()
        await servicer.stop(0)
        return [answers, refused, counted]

    answers, refused, counted = asyncio.run(scenario())
    for name, case, (worker, control_plane) in zip(PICKED, cases, answers, strict=True):
        assert worker == _expected(case) == control_plane, name
    assert refused[0] == refused[1] == ("deny", "authz:unavailable", None)
    assert refused[2] == b"authz:unavailable"
    assert counted == 3  # the last worker (the last case's policies) answered its three checks
