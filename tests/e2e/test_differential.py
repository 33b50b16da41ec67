"""Differential test: random policy sets and requests — the evaluator behind `explain` and a real
Envoy running our translated configuration agree on every verdict."""

from __future__ import annotations

import http.client
import os
import random
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from meshwarden.engine import (
    Request,
    TrustDomain,
    decide,
)
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    SystemClock,
)
from meshwarden.xds import (
    CLUSTER,
    LISTENER,
    StaticTls,
    TranslationContext,
    workload_resources,
)

from meshwarden.demo import DemoIdp, sample_apps

from .._loopback import Addresses, free_port
from ._random_mesh import DESTINATION, IDS, ISSUER, TD, mesh_documents, random_request
from ._static_envoy import compile_docs, static_envoy, write_svid

# `make test` runs 30 sets × 12 requests; bench/bench_differential.py runs thousands.
SETS = int(os.environ.get("MESHWARDEN_DIFFERENTIAL_SETS", "30"))
REQUESTS_PER_SET = 12


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    port = free_port()
    with sample_apps([port], []):
        yield port


@pytest.fixture(scope="module")
def mesh_under_test(backend: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("differential")
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    bundle = folder / "bundle.pem"
    bundle.write_bytes(ca.bundle().x509_pem())
    chain, key = write_svid(ca, f"spiffe://{TD}/ns/a/sa/x", folder)
    clients = {spiffe_id: write_svid(ca, spiffe_id, folder) for spiffe_id in IDS}
    ctx = TranslationContext(static_tls=StaticTls(chain, key, str(bundle), TD), inline_routes=True)
    idp = DemoIdp(ISSUER)
    sets, listeners, clusters = [], [], {}
    addresses = Addresses()  # of this process: no other run's
    for i in range(SETS):
        rng = random.Random(7000 + i)
        address = addresses.next()
        compiled = compile_docs(mesh_documents(rng, address, backend, idp.jwks()))
        resources = workload_resources(compiled, DESTINATION, ctx)
        for listener in resources[LISTENER]:
            listener["name"] = f"set{i}:{listener['name']}"
            listeners.append(listener)
        clusters.update({c["name"]: c for c in resources[CLUSTER]})
        sets.append((address, compiled, [random_request(rng) for _ in range(REQUESTS_PER_SET)]))
    with static_envoy(folder, listeners, list(clusters.values())):
        yield sets, clients, idp


def _send(
    address: str, req: dict[str, Any], clients: dict[str, tuple[str, str]], idp: DemoIdp
) -> int | str:
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
            decision = decide(
                compiled.plan(DESTINATION),
                Request.build(
                    DESTINATION,
                    8080,
                    identity=req["identity"],
                    source_ip=req["source_ip"],
                    method=req["method"],
                    path=req["path"],
                    headers={"x-tenant": req["tenant"]} if req["tenant"] else None,
                    jwt_claims=req["claims"],
                ),
            )
            got = _send(address, req, clients, idp)
            cases += 1
            allowed += decision.allowed
            if decision.allowed != (got == 200):
                engine = f"{decision.verdict} ({decision.policy}#{decision.rule})"
                disagreements.append(f"set {i} {req}: engine {engine}, Envoy {got}")
    assert cases >= SETS * REQUESTS_PER_SET >= 300
    print(
        f"\ndifferential: {cases} cases, {allowed} allowed, {cases - allowed} denied, "
        f"{len(disagreements)} disagreements"
    )
    assert 0 < allowed < cases, "the random cases must contain both verdicts"
    assert not disagreements, f"{len(disagreements)}/{cases} differ:\n" + "\n".join(disagreements)
