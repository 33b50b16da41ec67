"""Imported Istio policies: the evaluator behind `explain` and a real Envoy running the
translated configuration agree on every verdict, on an HTTP port and a tcp port, for peers
with and without a certificate, with tokens, headers, path templates and address blocks."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshwarden.engine import (
    CompiledMesh,
    Request,
    TrustDomain,
    check_documents,
    decide,
    parse_text,
)
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    SystemClock,
)
from meshwarden.importers import ImportOptions, import_paths
from meshwarden.xds import CLUSTER, LISTENER, StaticTls, TranslationContext, workload_resources

from meshwarden._sidecars import admin_request
from meshwarden.demo import DemoIdp, sample_apps

from .._loopback import claim_net
from .._loopback import free_port as _free_port
from ._static_envoy import write_svid as _write_svid

TD = "cluster.local"
DEST = "foo/httpbin"
ISSUER = "https://idp.istio-diff.test"
SETS = 5  # the policy sets of `_policy_sets`
PEERS = {"sleep": ("foo", 11), "curl": ("dev", 12), "admin": ("ops", 13)}  # app: (namespace, host)


def _cluster(net: str, dest_address: str) -> str:
    pods = [
        (
            "httpbin",
            "foo",
            dest_address,
            [
                {"containerPort": 8000, "name": "http-web"},
                {"containerPort": 9000, "name": "tcp-echo"},
            ],
        )
    ]
    pods += [
        (app, ns, f"{net}.{host}", [{"containerPort": 80, "name": "http"}])
        for app, (ns, host) in PEERS.items()
    ]
    items = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": app, "namespace": ns, "labels": {"app": app}},
            "spec": {"serviceAccountName": app, "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": ip},
        }
        for app, ns, ip, ports in pods
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _istio(kind: str, ref: str, spec: dict[str, Any]) -> dict[str, Any]:
    namespace, name = ref.split("/")
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _op(**fields: Any) -> dict[str, Any]:
    return {"operation": fields}


def _src(**fields: Any) -> dict[str, Any]:
    return {"source": fields}


def _policy_sets(net: str, jwks: str) -> list[str]:
    """Istio objects as `kubectl get -o yaml` would print them, one import each; every set
    starts with the RequestAuthentication of the test's identity provider."""
    authn = _istio(
        "RequestAuthentication",
        "istio-system/idp",
        {"jwtRules": [{"issuer": ISSUER, "jwks": jwks}]},
    )
    ap = "AuthorizationPolicy"
    sets = [
        [
            _istio(
                ap,
                "foo/reference",
                {
                    "rules": [
                        {
                            "from": [
                                _src(principals=[f"{TD}/ns/foo/sa/sleep"]),
                                _src(namespaces=["dev"]),
                            ],
                            "to": [
                                _op(methods=["GET"], paths=["/info*"]),
                                _op(methods=["POST"], paths=["/data"]),
                            ],
                            "when": [{"key": "request.auth.claims[iss]", "values": [ISSUER]}],
                        }
                    ]
                },
            )
        ],
        [
            _istio(
                ap,
                "foo/deny-post",
                {
                    "action": "DENY",
                    "rules": [
                        {
                            "from": [_src(namespaces=["dev"])],
                            "to": [_op(methods=["POST"], ports=["8000", "9000"])],
                        }
                    ],
                },
            )
        ],
        [
            _istio(
                ap,
                "foo/not-forms",
                {
                    "rules": [
                        {
                            "from": [_src(notPrincipals=[f"{TD}/ns/ops/sa/admin"])],
                            "to": [
                                _op(notPaths=["/admin/{**}"], notMethods=["DELETE"], ports=["8000"])
                            ],
                        },
                        {
                            "from": [_src(ipBlocks=[f"{net}.0/24"], notIpBlocks=[f"{net}.11"])],
                            "to": [_op(ports=["9000"])],
                        },
                    ]
                },
            )
        ],
        [
            _istio(
                ap,
                "foo/only-sleep",
                {
                    "action": "DENY",
                    "rules": [
                        {
                            "from": [_src(notPrincipals=[f"{TD}/ns/foo/sa/sleep"])],
                            "to": [_op(notPaths=["/info*"])],
                        }
                    ],
                },
            )
        ],
        [
            _istio(
                ap,
                "foo/conditions",
                {
                    "rules": [
                        {
                            "to": [_op(paths=["/api/{*}/items"], ports=["8000"])],
                            "when": [
                                {"key": "request.headers[x-version]", "values": ["v1", "beta-*"]},
                                {"key": "request.auth.claims[groups]", "values": ["admin"]},
                                {"key": "request.auth.claims[realm][role]", "notValues": ["guest"]},
                            ],
                        },
                        {"from": [_src(namespaces=["foo", "dev"])], "to": [_op(ports=["9000"])]},
                    ]
                },
            ),
            _istio("PeerAuthentication", "istio-system/default", {"mtls": {"mode": "STRICT"}}),
            _istio(
                "PeerAuthentication",
                "foo/echo",
                {
                    "selector": {"matchLabels": {"app": "httpbin"}},
                    "portLevelMtls": {9000: {"mode": "PERMISSIVE"}},
                },
            ),
        ],
    ]
    return [yaml.safe_dump_all([authn, *objects], sort_keys=False) for objects in sets]


def _requests(net: str, idp: DemoIdp) -> list[dict[str, Any]]:
    admin = {"iss": ISSUER, "sub": "alice", "groups": ["dev", "admin"]}
    guest = {"iss": ISSUER, "sub": "bob", "groups": "admin", "realm": {"role": "guest"}}
    http_calls = [
        ("GET", "/info/x", {}, None),
        ("GET", "/info/x", {}, admin),
        ("POST", "/data", {}, admin),
        ("GET", "/api/v2/items", {"x-version": "v1"}, admin),
        ("GET", "/api/v2/items", {"x-version": "beta-1"}, guest),
        ("DELETE", "/admin/a/b", {}, None),
        ("GET", "/data/../info", {}, admin),
        ("GET", "/api/v2/x/items", {"x-version": "v1"}, admin),
    ]
    peers: list[tuple[str | None, str]] = [
        (f"spiffe://{TD}/ns/{ns}/sa/{app}", f"{net}.{host}") for app, (ns, host) in PEERS.items()
    ]
    peers += [(None, f"{net}.11"), (None, f"{net}.19")]  # plaintext: inside / outside the blocks
    out = []
    for identity, source in peers:
        for method, path, headers, claims in http_calls:
            out.append(
                {
                    "identity": identity,
                    "source_ip": source,
                    "port": 8000,
                    "method": method,
                    "path": path,
                    "headers": headers,
                    "claims": claims,
                }
            )
        out.append(
            {
                "identity": identity,
                "source_ip": source,
                "port": 9000,
                "method": None,
                "path": None,
                "headers": {},
                "claims": None,
            }
        )
    return out


def _import(folder: Path, cluster: str, istio: str, ports: dict[int, int]) -> CompiledMesh:
    (folder / "in").mkdir(parents=True)
    (folder / "in" / "cluster.json").write_text(cluster)
    (folder / "in" / "istio.yaml").write_text(istio)
    result = import_paths([folder / "in"], str(folder / "out"), ImportOptions(trust_domain=TD))
    assert result.ok, [str(p) for p in result.problems]
    docs = [d for f in result.files for d in yaml.safe_load_all(f.text) if d]
    for doc in docs:  # the apps behind the sidecar listen on free loopback ports
        if (
            doc["kind"] == "Workload"
            and f"{doc['metadata']['namespace']}/{doc['metadata']['name']}" == DEST
        ):
            for port in doc["spec"]["ports"]:
                port["targetPort"] = ports[port["port"]]
    documents, problems = parse_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, [str(d) for d in found]
    return compiled


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[int, int]]:
    ports = {8000: _free_port(), 9000: _free_port()}
    with sample_apps([ports[8000]], [ports[9000]]):
        yield ports


@pytest.fixture
def istio_mesh(
    apps: dict[int, int],
    tmp_path: Path,
    envoy: Callable[[dict[str, Any]], Any],
) -> tuple[list[Any], dict[str, tuple[str, str]], DemoIdp]:
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    (tmp_path / "bundle.pem").write_bytes(ca.bundle().x509_pem())
    chain, key = _write_svid(ca, f"spiffe://{TD}/ns/foo/sa/httpbin", tmp_path)
    clients = {
        f"spiffe://{TD}/ns/{ns}/sa/{app}": _write_svid(
            ca, f"spiffe://{TD}/ns/{ns}/sa/{app}", tmp_path
        )
        for app, (ns, _) in PEERS.items()
    }
    ctx = TranslationContext(
        static_tls=StaticTls(chain, key, str(tmp_path / "bundle.pem"), TD), inline_routes=True
    )
    idp = DemoIdp(ISSUER)
    sets, listeners, clusters = [], [], {}
    for i in range(SETS):
        net = claim_net()  # a /24 of our own
        istio = _policy_sets(net, idp.jwks())[i]
        compiled = _import(tmp_path / f"set{i}", _cluster(net, f"{net}.2"), istio, apps)
        resources = workload_resources(compiled, DEST, ctx)
        for listener in resources[LISTENER]:
            listener["name"] = f"set{i}:{listener['name']}"
            listeners.append(listener)
        clusters.update({c["name"]: c for c in resources[CLUSTER]})
        sets.append((f"{net}.2", compiled, _requests(net, idp)))
    running = envoy(
        {"staticResources": {"listeners": listeners, "clusters": list(clusters.values())}}
    )
    deadline = time.monotonic() + 60
    while admin_request(running.admin_socket, "/ready", timeout=1)[0] != 200:
        assert time.monotonic() < deadline, running.log_text()[-3000:]
        time.sleep(0.1)
    return sets, clients, idp


def _send(
    address: str, req: dict[str, Any], clients: dict[str, tuple[str, str]], idp: DemoIdp
) -> bool:
    """Whether Envoy let the request through (HTTP 200, or the tcp echo answered)."""
    context = None
    if req["identity"]:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.load_cert_chain(*clients[req["identity"]])
    try:
        if req["port"] == 9000:
            return _echo(address, req["source_ip"], context)
        headers = dict(req["headers"])
        if req["claims"]:
            token = idp.token({**req["claims"], "exp": int(time.time()) + 600})
            headers["authorization"] = "Bearer " + token
        source = (req["source_ip"], 0)
        conn = (
            http.client.HTTPSConnection(
                address, 8000, context=context, source_address=source, timeout=10
            )
            if context
            else http.client.HTTPConnection(address, 8000, source_address=source, timeout=10)
        )
        try:
            conn.request(req["method"], req["path"], headers=headers)
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


def _echo(address: str, source_ip: str, context: ssl.SSLContext | None) -> bool:
    with socket.create_connection(
        (address, 9000), timeout=10, source_address=(source_ip, 0)
    ) as raw:
        sock = context.wrap_socket(raw) if context else raw
        sock.sendall(b"ping\n")
        return sock.recv(64).startswith(b"echo ping")  # the demo's echo app prefixes "echo "


def test_envoy_and_the_evaluator_agree_on_imported_istio_policies(istio_mesh: Any) -> None:
    sets, clients, idp = istio_mesh
    disagreements, cases, allowed = [], 0, 0
    for i, (address, compiled, requests) in enumerate(sets):
        for req in requests:
            decision = decide(
                compiled.plan(DEST),
                Request.build(
                    DEST,
                    req["port"],
                    identity=req["identity"],
                    source_ip=req["source_ip"],
                    method=req["method"],
                    path=req["path"],
                    headers=req["headers"] or None,
                    jwt_claims=req["claims"],
                ),
            )
            got = _send(address, req, clients, idp)
            cases += 1
            allowed += decision.allowed
            if decision.allowed != got:
                engine = f"{decision.verdict} ({decision.policy}#{decision.rule})"
                disagreements.append(f"set {i} {req}: engine {engine}, Envoy allowed={got}")
    print(f"\nistio differential: {cases} cases, {allowed} allowed, {len(disagreements)} differ")
    assert 0 < allowed < cases
    assert not disagreements, f"{len(disagreements)}/{cases} differ:\n" + "\n".join(disagreements)
