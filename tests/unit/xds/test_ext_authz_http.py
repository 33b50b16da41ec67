"""The ext_authz HTTP front: the same decisions as gRPC `Check` for the same request, a check
the sidecar's filter did not write is denied, and on the wire it keeps connections alive, answers
pipelined heads in order, closes on malformed input, bounds connections and, with TLS, takes the
caller's identity from its client certificate."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy_data_plane.envoy.config.core.v3 import Address, Metadata, SocketAddress
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    CheckRequest,
)
from envoy_data_plane.google.protobuf import Struct
from meshwarden.engine import CompiledMesh, SpiffeId, TrustDomain, check_documents, parse_text
from meshwarden.identities import CaConfig, CertificateAuthority, SystemClock
from meshwarden.xds import (
    EXT_AUTHZ_FRONT_IDLE_SECONDS,
    EXT_AUTHZ_GRPC_CLUSTER,
    EXT_AUTHZ_HTTP_CLUSTER,
    EXT_AUTHZ_HTTP_IDLE_SECONDS,
    XDS_CLUSTER,
    Authorization,
    AuthzHttpFront,
    TranslationContext,
    bootstrap,
    front_tls,
    registered_workload,
    workload_resources,
)
from meshwarden.xds._check import decode_check
from meshwarden.xds._ext_authz_filter import JWT_AUTHN_NS, PORT_HEADER, WORKLOAD_HEADER
from meshwarden.xds._ext_authz_http import serve_authz_http
from meshwarden.xds._ext_authz_http1 import RequestReader
from meshwarden.xds._loopback import serve_http_on_loopback
from meshwarden.xds._predicates import JWT_PAYLOAD_KEY

from meshwarden._authz_serve import DRAIN_SECONDS

TD = "example.org"
CALLER = f"spiffe://{TD}/ns/b/sa/client"
OTHER = f"spiffe://{TD}/ns/b/sa/other"
API = f"spiffe://{TD}/ns/a/sa/api"
POLICIES = [
    {"action": "DENY", "rules": [{"to": [{"paths": ["/admin/*"]}]}]},
    {"rules": [{"from": [{"identities": [CALLER]}], "to": [{"methods": ["GET"]}]}]},
    {"rules": [{"when": [{"key": "request.headers[x-tenant]", "values": ["acme"]}]}]},
    {"rules": [{"when": [{"key": "request.jwt.claims[groups]", "values": ["ops"]}]}]},
]


def _mesh() -> CompiledMesh:
    docs: list[dict[str, Any]] = [
        {"kind": "Mesh", "metadata": {"name": "m"}, "spec": {"trustDomain": TD}},
        {
            "kind": "Workload",
            "metadata": {"name": "api", "namespace": "a"},
            "spec": {"serviceAccount": "api", "ports": [{"port": 8080, "protocol": "http"}]},
        },
        {
            "kind": "JwtIssuer",
            "metadata": {"name": "idp", "namespace": "a"},
            "spec": {"issuer": "https://idp", "jwksUri": "https://idp/jwks"},
        },
        *(
            {"kind": "AuthorizationPolicy", "metadata": {"name": f"p{i}", "namespace": "a"}}
            | {"spec": spec}
            for i, spec in enumerate(POLICIES)
        ),
    ]
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    documents, problems = parse_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, [str(d) for d in found]
    return compiled


MESH = _mesh()


def _authorization() -> Authorization:
    return Authorization(lambda caller, metadata: MESH.plan(metadata[WORKLOAD_HEADER]))


def _http_check(
    principal: str,
    method: str,
    path: str,
    headers: dict[str, str],
    claims: dict[str, Any] | None,
    extra: bytes = b"",
) -> bytes:
    """A request head as Envoy's HTTP ext_authz filter writes it (checked with Envoy 1.40)."""
    jwt = json.dumps(claims, separators=(",", ":")) if claims is not None else ""
    fields = {
        "host": "api.a:8080",
        "content-length": "0",
        **headers,
        "x-meshwarden-workload": "a/api",
        "x-meshwarden-port": "8080",
        "x-meshwarden-peer": "=" + principal,
        "x-meshwarden-source": "=10.1.2.3",
        "x-meshwarden-jwt": "=" + jwt,
        "x-envoy-internal": "true",
    }
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    head = f"{method} /meshwarden.authz/check{path} HTTP/1.1\r\n{lines}"
    return head.encode() + extra + b"\r\n"


def _grpc_check(
    principal: str, method: str, path: str, headers: dict[str, str], claims: Any
) -> bytes:
    http = AttributeContextHttpRequest(method=method, path=path, host="api.a:8080", headers=headers)
    context = None
    if claims is not None:
        payload = Struct.from_dict({JWT_PAYLOAD_KEY: claims})
        context = Metadata(filter_metadata={JWT_AUTHN_NS: payload})
    source = AttributeContextPeer(
        principal=principal,
        address=Address(socket_address=SocketAddress(address="10.1.2.3", port_value=40000)),
    )
    attributes = AttributeContext(
        source=source, request=AttributeContextRequest(http=http), metadata_context=context
    )
    return bytes(CheckRequest(attributes=attributes))


def _answer(front: AuthzHttpFront, head: bytes) -> tuple[int, dict[str, str], str]:
    (request,) = RequestReader().feed(head)
    return _parse_response(front.answer(request, None))  # type: ignore[arg-type]


def _parse_response(raw: bytes) -> tuple[int, dict[str, str], str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), fields, body.decode()


CASES = [
    (CALLER, "GET", "/api/x", {}, None),
    (CALLER, "POST", "/api/x", {}, None),
    (OTHER, "GET", "/api/x", {}, None),
    ("", "GET", "/api/x", {}, None),
    (CALLER, "GET", "/admin/x", {}, None),
    (OTHER, "POST", "/x", {"x-tenant": "acme"}, None),
    (OTHER, "POST", "/x", {"x-tenant": "other"}, None),
    (OTHER, "POST", "/x", {}, {"iss": "https://idp", "sub": "a", "groups": ["ops"]}),
    (OTHER, "POST", "/x", {}, {"iss": "https://idp", "sub": "a", "groups": ["dev"]}),
    (API, "DELETE", "/api/../admin/y?q=1", {}, None),
]


@pytest.mark.parametrize(("principal", "method", "path", "headers", "claims"), CASES)
def test_the_http_front_decides_as_grpc_check_does(
    principal: str, method: str, path: str, headers: dict[str, str], claims: Any
) -> None:
    grpc_side = _authorization()
    metadata = {WORKLOAD_HEADER: "a/api", PORT_HEADER: "8080"}
    check = decode_check(_grpc_check(principal, method, path, headers, claims))
    verdict, _ = grpc_side.answer(check, None, metadata)
    status, fields, _ = _answer(
        AuthzHttpFront(_authorization()), _http_check(principal, method, path, headers, claims)
    )
    expected = {k: str(v) for k, v in verdict.to_metadata().items() if v is not None}
    assert {k: v for k, v in fields.items() if k in expected} == expected
    assert (status == 200) == (verdict.decision == "allow")


def test_a_denial_answers_403_naming_the_policy_and_rule() -> None:
    status, fields, body = _answer(
        AuthzHttpFront(_authorization()), _http_check(CALLER, "GET", "/admin/x", {}, None)
    )
    assert (status, fields["decision"], fields["policy"], fields["rule"]) == (
        403,
        "deny",
        "a/p0",
        "0",
    )
    assert body == "ext_authz: access denied by a/p0#0"


@pytest.mark.parametrize(
    "forged",
    [
        b"x-meshwarden-peer: =" + CALLER.encode() + b"\r\n",  # a second peer
        b"x-meshwarden-workload: a/api\r\n",
        b"x-meshwarden-jwt: ={}\r\n",
    ],
)
def test_a_reserved_header_twice_is_denied_never_decided(forged: bytes) -> None:
    status, fields, body = _answer(
        AuthzHttpFront(_authorization()), _http_check(CALLER, "GET", "/api/x", {}, None, forged)
    )
    assert (status, fields["decision"], fields["policy"]) == (403, "deny", "authz:unavailable")
    assert "exactly once" in body


def test_a_check_without_the_filters_headers_is_denied() -> None:
    head = b"GET /meshwarden.authz/check/api/x HTTP/1.1\r\nhost: api.a:8080\r\n\r\n"
    status, fields, _ = _answer(AuthzHttpFront(_authorization()), head)
    assert (status, fields["policy"]) == (403, "authz:unavailable")


def test_a_peer_header_not_written_by_the_filter_is_denied() -> None:
    head = _http_check(CALLER, "GET", "/api/x", {}, None).replace(b"peer: =", b"peer: ")
    status, fields, _ = _answer(AuthzHttpFront(_authorization()), head)
    assert (status, fields["policy"]) == (403, "authz:unavailable")


# --------------------------------------------------------------------------- on the wire


@pytest.fixture
def loopback() -> Iterator[int]:
    with serve_http_on_loopback(_authorization()) as port:
        yield port


def _exchange(port: int, payload: bytes, answers: int) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        return _responses(s, answers)


def _responses(s: socket.socket, count: int) -> list[bytes]:
    """Read `count` responses (or until the server closes)."""
    data, out = b"", list[bytes]()
    for _ in range(200):
        while b"\r\n\r\n" in data and len(out) < count:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(rest) < length:
                break
            out.append(head + b"\r\n\r\n" + rest[:length])
            data = rest[length:]
        if len(out) == count:
            return out
        chunk = s.recv(65536)
        if not chunk:
            return out
        data += chunk
    return out


def test_one_connection_answers_pipelined_checks_in_order(loopback: int) -> None:
    allow = _http_check(CALLER, "GET", "/api/x", {}, None)
    deny = _http_check(CALLER, "GET", "/admin/x", {}, None)
    got = _exchange(loopback, allow + deny + allow, 3)
    assert [_parse_response(r)[0] for r in got] == [200, 403, 200]


def test_a_malformed_head_is_answered_and_the_connection_closed(loopback: int) -> None:
    allow = _http_check(CALLER, "GET", "/api/x", {}, None)
    with socket.create_connection(("127.0.0.1", loopback), timeout=5) as s:
        s.sendall(allow + b"GET /x HTTP/1.1\r\nx: \x01\r\n\r\n" + allow)
        got = _responses(s, 3)
        assert [_parse_response(r)[0] for r in got] == [200, 400]
        assert s.recv(100) == b""  # closed: the third request is never read


def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        front = AuthzHttpFront(_authorization(), max_connections=1)
        server = await serve_authz_http(front, "127.0.0.1", 0, None)
        port = server.sockets[0].getsockname()[1]
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        for _, writer in (first, second):
            writer.write(_http_check(CALLER, "GET", "/api/x", {}, None))
        answered = await first[0].readuntil(b"\r\n\r\n")
        refused = await second[0].read()
        server.close()
        return answered, refused

    answered, refused = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert answered.startswith(b"HTTP/1.1 200") and refused == b""


def test_a_draining_front_answers_every_connections_next_check_then_closes_it() -> None:
    """A retired worker hands its sidecars over: no request is dropped unanswered. A connection
    idle when the drain begins is not closed under its sidecar (a check sent on it at that
    instant would fail): its next check is answered too, with `connection: close`."""

    async def scenario() -> tuple[bytes, bytes, int]:
        front = AuthzHttpFront(_authorization())
        server = await serve_authz_http(front, "127.0.0.1", 0, None)
        port = server.sockets[0].getsockname()[1]
        idle = await asyncio.open_connection("127.0.0.1", port)
        busy = await asyncio.open_connection("127.0.0.1", port)
        check = _http_check(CALLER, "GET", "/api/x", {}, None)
        busy[1].write(check[:20])  # a request half read when the drain begins
        await asyncio.sleep(0.2)
        server.close()
        front.drain()
        await asyncio.sleep(0.2)
        busy[1].write(check[20:])
        idle[1].write(check)  # sent after the drain began, on a connection idle until then
        answered = await busy[0].read()  # its answer, then the end of the connection
        answered_idle = await idle[0].read()
        return answered, answered_idle, front.connections

    answered, answered_idle, left = asyncio.run(asyncio.wait_for(scenario(), 10))
    for answer in (answered, answered_idle):
        status, headers, _ = _parse_response(answer)
        assert (status, headers["connection"]) == (200, "close")
    assert left == 0


def test_a_sidecar_closes_its_idle_connections_to_the_front_before_the_front_would() -> None:
    """The sidecar's idle timeout on both of the front's clusters (HTTP/1.1 and h2) is shorter
    than a retired worker's wait and than the front's own idle timeout, so an idle connection
    is closed by the sidecar, never under it."""
    config = bootstrap(
        "a/w", "127.0.0.1", 8444, "/sds.sock", trust_domain="example.org", ext_authz_http_port=8445
    )
    clusters = {c["name"]: c for c in config["staticResources"]["clusters"]}
    for name, protocol in [
        (EXT_AUTHZ_HTTP_CLUSTER, "httpProtocolOptions"),
        (EXT_AUTHZ_GRPC_CLUSTER, "http2ProtocolOptions"),
    ]:
        options = clusters[name]["typedExtensionProtocolOptions"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert options["commonHttpProtocolOptions"]["idleTimeout"] == (
            f"{EXT_AUTHZ_HTTP_IDLE_SECONDS}s"
        )
        assert protocol in options["explicitHttpConfig"]
    assert EXT_AUTHZ_HTTP_IDLE_SECONDS < DRAIN_SECONDS
    assert EXT_AUTHZ_HTTP_IDLE_SECONDS * 5 <= EXT_AUTHZ_FRONT_IDLE_SECONDS


def test_plaintext_is_refused_on_an_address_other_than_loopback() -> None:
    front = AuthzHttpFront(_authorization())
    with pytest.raises(ValueError, match="loopback"):
        asyncio.run(serve_authz_http(front, "0.0.0.0", 0, None))


def _svid(ca: CertificateAuthority, spiffe_id: str, folder: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives.serialization import Encoding
    from meshwarden.identities import generate_key, private_key_pkcs8_pem

    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
    chain, key_file = folder / f"{spiffe_id.rsplit('/', 1)[-1]}.pem", folder / "key.pem"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
    key_file.write_bytes(private_key_pkcs8_pem(key))
    return chain, key_file


def test_with_tls_the_callers_certificate_names_the_workloads_it_may_ask_for(
    tmp_path: Path,
) -> None:
    """The sidecar of a/api (identity API) may ask for a/api; a caller with another identity
    naming a/api is refused — as for gRPC Check, through the same resolver."""
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    server_dir, api_dir, other_dir = (tmp_path / n for n in ("s", "api", "other"))
    for folder in (server_dir, api_dir, other_dir):
        folder.mkdir()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.verify_mode = ssl.CERT_REQUIRED
    tls.load_verify_locations(cadata=ca.bundle().x509_pem().decode())
    tls.load_cert_chain(*_svid(ca, f"spiffe://{TD}/ns/cp/sa/server", server_dir))

    def client(folder: Path, spiffe_id: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.load_cert_chain(*_svid(ca, spiffe_id, folder))
        return context

    async def scenario() -> list[int]:
        resolver = registered_workload(lambda: MESH, lambda caller: caller)
        front = AuthzHttpFront(Authorization(resolver))
        server = await serve_authz_http(front, "127.0.0.1", 0, tls)
        port = server.sockets[0].getsockname()[1]
        statuses = []
        for folder, spiffe_id in ((api_dir, API), (other_dir, OTHER)):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client(folder, spiffe_id)
            )
            writer.write(_http_check(CALLER, "GET", "/api/x", {}, None))
            head = await reader.readuntil(b"\r\n\r\n")
            statuses.append(int(head.split(b" ")[1]))
            writer.close()
        server.close()
        return statuses

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == [200, 403]


def test_after_a_ca_rotation_the_front_refuses_certificates_of_the_removed_ca(
    tmp_path: Path,
) -> None:
    """The front's TLS hands each handshake to the current context: new roots replace the old ones
    (a long-lived context could only add roots)."""
    old, new = (CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock()) for _ in "ab")
    folders = {name: tmp_path / name for name in ("server", "old", "new")}
    for folder in folders.values():
        folder.mkdir()
    chain, key = _svid(old, f"spiffe://{TD}/ns/cp/sa/server", folders["server"])
    tls = front_tls(chain, key, old.bundle().x509_pem())

    def client(ca: CertificateAuthority, folder: Path) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.load_cert_chain(*_svid(ca, API, folder))
        return context

    async def status(port: int, context: ssl.SSLContext) -> int | str:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.write(_http_check(CALLER, "GET", "/api/x", {}, None))
            head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            return int(head.split(b" ")[1])
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as refused:
            return type(refused).__name__

    async def scenario() -> list[int | str]:
        front = AuthzHttpFront(_authorization())
        server = await serve_authz_http(front, "127.0.0.1", 0, tls.listening)
        port = server.sockets[0].getsockname()[1]
        old_client, new_client = client(old, folders["old"]), client(new, folders["new"])
        got = [await status(port, old_client), await status(port, new_client)]
        tls.update(roots_pem=new.bundle().x509_pem())
        got += [await status(port, old_client), await status(port, new_client)]
        no_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        no_certificate.check_hostname, no_certificate.verify_mode = False, ssl.CERT_NONE
        got.append(await status(port, no_certificate))
        server.close()
        return got

    got = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert got[0] == 200 and got[1] != 200  # before: only the old CA's certificates
    assert got[2] != 200 and got[3] == 200  # after: only the new CA's
    assert got[4] != 200  # never without a certificate


def test_the_sidecar_bootstrap_reaches_the_front_on_every_control_plane_host(
    tmp_path: Path,
) -> None:
    config = bootstrap(
        "a/api",
        "cp-1",
        8444,
        str(tmp_path / "sds.sock"),
        trust_domain=TD,
        replicas=[("cp-2", 8444)],
        ext_authz_http_port=8445,
    )
    clusters = {c["name"]: c for c in config["staticResources"]["clusters"]}
    xds, front = clusters[XDS_CLUSTER], clusters[EXT_AUTHZ_HTTP_CLUSTER]

    def endpoints(cluster: dict[str, Any]) -> list[tuple[str, int]]:
        found = cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"]
        addresses = [e["endpoint"]["address"]["socketAddress"] for e in found]
        return [(a["address"], a["portValue"]) for a in addresses]

    assert endpoints(front) == [(host, 8445) for host, _ in endpoints(xds)]
    assert front["transportSocket"] == xds["transportSocket"]  # the workload SVID, server's SAN
    options = front["typedExtensionProtocolOptions"]
    assert "httpProtocolOptions" in str(options) and "http2" not in str(options)  # HTTP/1.1


def test_without_the_front_an_http_transport_workload_is_not_built() -> None:
    docs = yaml.safe_dump_all(
        [
            {
                "apiVersion": "meshwarden.io/v1alpha1",
                "kind": "Mesh",
                "metadata": {"name": "m"},
                "spec": {"enforcement": "ext-authz", "extAuthz": {"transport": "http"}},
            },
            {
                "apiVersion": "meshwarden.io/v1alpha1",
                "kind": "Workload",
                "metadata": {"name": "api", "namespace": "a"},
                "spec": {"addresses": ["10.0.0.1"], "ports": [{"port": 8080, "protocol": "http"}]},
            },
        ]
    )
    documents, _ = parse_text(docs)
    compiled, _ = check_documents(documents)
    assert compiled is not None
    with pytest.raises(ValueError, match="--ext-authz-listen"):
        workload_resources(compiled, "a/api", TranslationContext(ext_authz_cluster="x"))
