"""Differential test: random policy sets and requests — the evaluator behind `explain` and a real
Envoy running our translated configuration agree on every verdict."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import (
    CompiledMesh,
    Request,
    SpiffeId,
    TrustDomain,
    check_documents,
    decide,
    parse_text,
)
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    SystemClock,
    generate_key,
    private_key_pkcs8_pem,
)
from meshwarden.xds import (
    CLUSTER,
    LISTENER,
    StaticTls,
    TranslationContext,
    envoy_binary,
    workload_resources,
)

from meshwarden._sidecars import admin_request
from meshwarden.demo import DemoIdp, sample_apps

from ._random_mesh import DESTINATION, IDS, ISSUER, TD, mesh_documents, random_request

# `make test` runs 30 sets × 12 requests; bench/bench_differential.py runs thousands.
SETS = int(os.environ.get("MESHWARDEN_DIFFERENTIAL_SETS", "30"))
REQUESTS_PER_SET = 12


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    port = _free_port()
    with sample_apps([port], []):
        yield port


def _write_svid(ca: CertificateAuthority, spiffe_id: str, folder: Path) -> tuple[str, str]:
    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
    name = spiffe_id.rsplit("/", 3)[-3] + "-" + spiffe_id.rsplit("/", 1)[-1]
    chain, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
    key_file.write_bytes(private_key_pkcs8_pem(key))
    return str(chain), str(key_file)


def _compile(docs: list[dict[str, Any]]) -> CompiledMesh:
    documents, problems = parse_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, [str(d) for d in found]
    return compiled


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mesh_under_test(backend: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("differential")
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    bundle = folder / "bundle.pem"
    bundle.write_bytes(ca.bundle().x509_pem())
    chain, key = _write_svid(ca, f"spiffe://{TD}/ns/a/sa/x", folder)
    clients = {spiffe_id: _write_svid(ca, spiffe_id, folder) for spiffe_id in IDS}
    ctx = TranslationContext(static_tls=StaticTls(chain, key, str(bundle), TD),
                             inline_routes=True)  # fmt: skip
    idp = DemoIdp(ISSUER)
    sets, listeners, clusters = [], [], {}
    for i in range(SETS):
        rng = random.Random(7000 + i)
        address = f"127.{os.getpid() % 250 + 1}.{30 + i // 250}.{i % 250 + 1}"  # per run
        compiled = _compile(mesh_documents(rng, address, backend, idp.jwks()))
        resources = workload_resources(compiled, DESTINATION, ctx)
        for listener in resources[LISTENER]:
            listener["name"] = f"set{i}:{listener['name']}"
            listeners.append(listener)
        clusters.update({c["name"]: c for c in resources[CLUSTER]})
        sets.append((address, compiled, [random_request(rng) for _ in range(REQUESTS_PER_SET)]))
    admin = folder / "admin.sock"
    config = {
        "admin": {"address": {"pipe": {"path": str(admin), "mode": 0o600}}},
        "staticResources": {"listeners": listeners, "clusters": list(clusters.values())},
    }
    (folder / "envoy.json").write_text(json.dumps(config))
    log = (folder / "envoy.log").open("w")
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(folder / "envoy.json"), "--concurrency", "1",
         "--use-dynamic-base-id", "--log-level", "warning"], stdout=log, stderr=log)  # fmt: skip
    try:
        _wait_ready(admin, envoy, folder / "envoy.log")
        yield sets, clients, idp
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()


def _wait_ready(admin: Path, envoy: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert envoy.poll() is None, f"Envoy exited:\n{log.read_text()[-3000:]}"
        try:
            if admin_request(admin, "/ready", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"Envoy not ready:\n{log.read_text()[-3000:]}")


def _send(address: str, req: dict[str, Any], clients: dict[str, tuple[str, str]],
          idp: DemoIdp) -> int | str:  # fmt: skip
    headers = {"x-tenant": req["tenant"]} if req["tenant"] else {}
    if req["claims"]:
        token = idp.token({**req["claims"], "exp": int(time.time()) + 600})
        headers["authorization"] = "Bearer " + token
    source = (req["source_ip"], 0)
    if req["identity"]:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.load_cert_chain(*clients[req["identity"]])
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            address, 8080, context=context, source_address=source, timeout=10
        )
    else:
        conn = http.client.HTTPConnection(address, 8080, source_address=source, timeout=10)
    try:
        conn.request(req["method"], req["path"], headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return f"connection refused ({type(exc).__name__})"
    finally:
        conn.close()


def test_envoy_and_the_evaluator_agree_on_every_verdict(mesh_under_test: Any) -> None:
    sets, clients, idp = mesh_under_test
    disagreements, cases, allowed = [], 0, 0
    for i, (address, compiled, requests) in enumerate(sets):
        for req in requests:
            decision = decide(compiled.plan(DESTINATION), Request.build(
                DESTINATION, 8080, identity=req["identity"], source_ip=req["source_ip"],
                method=req["method"], path=req["path"],
                headers={"x-tenant": req["tenant"]} if req["tenant"] else None,
                jwt_claims=req["claims"]))  # fmt: skip
            got = _send(address, req, clients, idp)
            cases += 1
            allowed += decision.allowed
            if decision.allowed != (got == 200):
                engine = f"{decision.verdict} ({decision.policy}#{decision.rule})"
                disagreements.append(f"set {i} {req}: engine {engine}, Envoy {got}")
    assert cases >= SETS * REQUESTS_PER_SET >= 300
    print(f"\ndifferential: {cases} cases, {allowed} allowed, {cases - allowed} denied, "
          f"{len(disagreements)} disagreements")  # fmt: skip
    assert 0 < allowed < cases, "the random cases must contain both verdicts"
    assert not disagreements, f"{len(disagreements)}/{cases} differ:\n" + "\n".join(disagreements)
