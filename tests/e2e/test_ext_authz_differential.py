"""ext_authz mode enforces the same verdicts as native RBAC: the differential test's random
policy sets and requests, with `enforcement: ext-authz`, through a real Envoy whose ext_authz
filter asks our Authorization service — every verdict equals the evaluator's, and the dynamic
metadata Envoy ingests from the answer is the verdict the spans and the flow log read. Both
transports: gRPC `Check`, and `extAuthz.transport: http` (Envoy's HTTP ext_authz client and the
engine's HTTP/1.1 front)."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshwarden.engine import CompiledMesh, Request, TrustDomain, decide
from meshwarden.identities import CaConfig, CertificateAuthority, SystemClock
from meshwarden.xds import (
    CLUSTER,
    LISTENER,
    Authorization,
    StaticTls,
    TranslationContext,
    Verdict,
    envoy_binary,
    loopback_cluster,
    serve_http_on_loopback,
    serve_on_loopback,
    verdict_of,
    workload_resources,
)
from meshwarden.xds._envoy import static_cluster
from meshwarden.xds._ext_authz_filter import WORKLOAD_HEADER

from meshwarden.demo import DemoIdp, sample_apps

from .._loopback import Addresses
from .._loopback import free_port as _free_port
from ._live import appended_lines
from ._random_mesh import DESTINATION, IDS, ISSUER, TD, mesh_documents, random_request
from ._static_envoy import compile_docs as _compile
from ._static_envoy import wait_ready as _wait_ready
from ._static_envoy import write_svid as _write_svid
from .test_differential import REQUESTS_PER_SET, SETS, _send

AUTHZ_CLUSTER = "ext-authz-test"
SET_HEADER = "x-differential-set"  # test only: which random mesh a listener belongs to

FILE_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _ext_authz_configs(listener: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for chain in listener["filterChains"]:
        for network in chain["filters"]:
            for http in network["typedConfig"].get("httpFilters", []):
                if http["name"] == "envoy.filters.http.ext_authz":
                    yield http["typedConfig"]


def _hcms(listener: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for chain in listener["filterChains"]:
        yield from (f["typedConfig"] for f in chain["filters"] if "httpFilters" in f["typedConfig"])


def _log_decisions(listener: dict[str, Any], path: Path) -> None:
    """A file access log of the status and the ext_authz namespace of every request."""
    fmt = {"code": "%RESPONSE_CODE%", "authz": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz)%"}
    for hcm in _hcms(listener):
        hcm["accessLog"] = [
            {
                "name": "envoy.access_loggers.file",
                "typedConfig": {
                    "@type": FILE_ACCESS_LOG,
                    "path": str(path),
                    "logFormat": {"jsonFormat": fmt},
                },
            }
        ]


def _set_resolver(meshes: list[CompiledMesh]) -> Any:
    """Test resolver: plaintext loopback has no caller certificate, so the set index the test
    adds to the filter's initial metadata (gRPC) or to the workload header it adds (HTTP:
    `ns/name@set`) picks the mesh (production: `registered_workload`)."""

    def resolve(context: grpc.aio.ServicerContext, metadata: Mapping[str, str]) -> Any:
        index = metadata.get(SET_HEADER) or metadata[WORKLOAD_HEADER].rpartition("@")[2]
        return meshes[int(index)].plan(DESTINATION)

    return resolve


def _name_the_set(config: dict[str, Any], index: int) -> None:
    """The filter `config` names set `index` in what it sends the engine (test only)."""
    if "grpcService" in config:
        config["grpcService"]["initialMetadata"].append({"key": SET_HEADER, "value": str(index)})
        return
    for header in config["httpService"]["authorizationRequest"]["headersToAdd"]:
        if header["key"] == WORKLOAD_HEADER:
            header["value"] += f"@{index}"


@pytest.fixture(scope="module")
def ext_authz_mesh(
    ext_authz_transport: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    transport = ext_authz_transport
    folder = tmp_path_factory.mktemp(f"ext-authz-differential-{transport}")
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    bundle = folder / "bundle.pem"
    bundle.write_bytes(ca.bundle().x509_pem())
    tls = StaticTls(*_write_svid(ca, f"spiffe://{TD}/ns/a/sa/x", folder), str(bundle), TD)
    clients = {spiffe_id: _write_svid(ca, spiffe_id, folder) for spiffe_id in IDS}
    ctx = TranslationContext(
        static_tls=tls,
        inline_routes=True,
        ext_authz_cluster=AUTHZ_CLUSTER,
        ext_authz_http_cluster=AUTHZ_CLUSTER,
    )
    idp, backend = DemoIdp(ISSUER), _free_port()
    sets, listeners, clusters, meshes = [], [], {}, []
    addresses = Addresses()  # of this process: no other run's
    for i in range(SETS):
        rng = random.Random(7000 + i)  # the seeds of test_differential.py: the same cases
        address = addresses.next()
        docs = mesh_documents(rng, address, backend, idp.jwks())
        docs[0]["spec"]["enforcement"] = "ext-authz"
        # Verdicts, not latency, are compared: on a loaded machine the default 250 ms Check
        # timeout can expire, and Envoy then fails closed without the engine's metadata.
        docs[0]["spec"]["extAuthz"] = {"timeout": "10s", "transport": transport}
        compiled = _compile(docs)
        resources = workload_resources(compiled, DESTINATION, ctx)
        for listener in resources[LISTENER]:
            listener["name"] = f"set{i}:{listener['name']}"
            for config in _ext_authz_configs(listener):
                _name_the_set(config, i)
            _log_decisions(listener, folder / f"set{i}.log")
            listeners.append(listener)
        clusters.update({c["name"]: c for c in resources[CLUSTER]})
        meshes.append(compiled)
        sets.append((address, compiled, [random_request(rng) for _ in range(REQUESTS_PER_SET)]))
    authorization = Authorization(_set_resolver(meshes))
    serve = serve_http_on_loopback if transport == "http" else serve_on_loopback
    with serve(authorization) as port, sample_apps([backend], []):
        clusters[AUTHZ_CLUSTER] = (
            static_cluster(AUTHZ_CLUSTER, "127.0.0.1", port)  # HTTP/1.1
            if transport == "http"
            else loopback_cluster(AUTHZ_CLUSTER, port)
        )
        admin = folder / "admin.sock"
        config = {
            "admin": {"address": {"pipe": {"path": str(admin), "mode": 0o600}}},
            "staticResources": {"listeners": listeners, "clusters": list(clusters.values())},
        }
        (folder / "envoy.json").write_text(json.dumps(config))
        log = (folder / "envoy.log").open("w")
        envoy = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(folder / "envoy.json"),
                "--concurrency",
                "1",
                "--use-dynamic-base-id",
                "--log-level",
                "warning",
                "--file-flush-interval-msec",
                "100",
            ],
            stdout=log,
            stderr=log,
        )
        try:
            _wait_ready(admin, envoy, folder / "envoy.log")
            yield sets, clients, idp, authorization, folder
        finally:
            envoy.terminate()
            envoy.wait(timeout=10)
            log.close()


def _logged(path: Path, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        lines = appended_lines(path)
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def test_ext_authz_mode_enforces_the_evaluators_verdict_on_every_differential_case(
    ext_authz_mesh: Any,
) -> None:
    sets, clients, idp, authorization, folder = ext_authz_mesh
    disagreements, cases, allowed, checked_metadata = [], 0, 0, 0
    for i, (address, compiled, requests) in enumerate(sets):
        expected_log = []
        for req in requests:
            plan = compiled.plan(DESTINATION)
            decision = decide(
                plan,
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
            if isinstance(got, int):
                expected_log.append((got, verdict_of(plan, decision), req))
        for entry, (code, verdict, req) in zip(
            _logged(folder / f"set{i}.log", len(expected_log)), expected_log, strict=True
        ):
            assert int(entry["code"]) == code, (entry, req)
            if code == 401:  # jwt_authn refused the token: the engine was never asked
                assert not entry["authz"], (entry, req)
                continue
            assert Verdict.from_metadata(entry["authz"]) == verdict, (entry, req)
            checked_metadata += 1
    print(
        f"\next_authz differential: {cases} cases, {allowed} allowed, {cases - allowed} "
        f"denied, {authorization.checks} Check calls, {len(disagreements)} "
        "disagreements"
    )
    assert cases == SETS * REQUESTS_PER_SET >= 300
    assert 0 < allowed < cases, "the random cases must contain both verdicts"
    assert checked_metadata > cases // 2
    assert not disagreements, f"{len(disagreements)}/{cases} differ:\n" + "\n".join(disagreements)
