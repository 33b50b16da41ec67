"""Decision tags cost nothing on requests that are not sampled: through a real Envoy at 0 %
random sampling, the tagging (Lua) filter runs for a request with a sampled `traceparent` —
whose span reaches the collector tagged with its decision — and is skipped for the others."""

from __future__ import annotations

import http.client
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from meshwarden.engine import TrustDomain
from meshwarden.identities import CaConfig, CertificateAuthority, SystemClock
from meshwarden.xds import (
    CLUSTER,
    LISTENER,
    StaticTls,
    TracingTarget,
    TranslationContext,
    workload_resources,
)
from meshwarden.xds._tracing import TRACER_RUNTIME

from meshwarden.demo import OtlpReceiver, ReceivedSpan, otlp_receiver, sample_apps

from .._loopback import free_port
from ._live import appended_lines
from ._static_envoy import compile_docs, write_svid
from .conftest import RunningEnvoy

TD = "example.org"
WORKLOAD = "a/w"
SIDECAR = "a/w sidecar"


def _documents(address: str, app_port: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "kind": "Mesh",
            "metadata": {"name": "m"},
            "spec": {"trustDomain": TD, "mtls": "PERMISSIVE", "defaultPolicy": "deny"},
        },
        {
            "kind": "Workload",
            "metadata": {"name": "w", "namespace": "a", "labels": {"app": "w"}},
            "spec": {
                "addresses": [address],
                "ports": [{"port": 8080, "targetPort": app_port, "protocol": "http"}],
            },
        },
        {
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "loopback", "namespace": "a"},
            "spec": {
                "selector": {"matchLabels": {"app": "w"}},
                "rules": [{"from": [{"ipBlocks": ["127.0.0.0/8"]}]}],
            },
        },
    ]
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    return docs


def _with_access_log(listener: dict[str, Any], path: Path) -> dict[str, Any]:
    """The listener, its HTTP connection manager also writing, per request, the `x-case` header
    and the decision the tagging filter recorded (`-` when it did not run)."""
    line = "%REQ(X-CASE)% %DYNAMIC_METADATA(meshwarden:decision)%\n"
    log = {
        "name": "envoy.access_loggers.file",
        "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "logFormat": {"textFormatSource": {"inlineString": line}},
        },
    }
    for chain in listener["filterChains"]:
        for network_filter in chain["filters"]:
            hcm = network_filter["typedConfig"]
            if "httpFilters" in hcm:
                hcm["accessLog"] = [*hcm.get("accessLog", []), log]
    return listener


def _get(address: str, path: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection(address, 8080, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _logged(path: Path, cases: int) -> dict[str, str]:
    """case → the decision the tagging filter recorded, once Envoy has flushed every line."""
    lines: list[str] = []
    deadline = time.monotonic() + 60  # Envoy flushes its file access logs every 0.2 s
    while time.monotonic() < deadline:
        lines = appended_lines(path)
        if len(lines) >= cases:
            return dict(line.split(" ", 1) for line in lines)
        time.sleep(0.1)
    raise AssertionError(f"{cases} access-log lines expected: {lines}")


Sidecar = Callable[[float], tuple[str, OtlpReceiver, Path]]


@pytest.fixture
def sidecar(
    envoy: Callable[[dict[str, Any]], RunningEnvoy], loopback: str, tmp_path: Path
) -> Iterator[Sidecar]:
    """sampling % → a traced sidecar's address, its collector and its access-log file."""
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    (tmp_path / "bundle.pem").write_bytes(ca.bundle().x509_pem())
    chain, key = write_svid(ca, f"spiffe://{TD}/ns/a/sa/w", tmp_path)
    tls = StaticTls(chain, key, str(tmp_path / "bundle.pem"), TD)
    app_port, log = free_port(), tmp_path / "access.log"
    mesh = compile_docs(_documents(loopback, app_port))
    with otlp_receiver() as receiver, sample_apps([app_port], []):

        def start(sampling: float) -> tuple[str, OtlpReceiver, Path]:
            target = TracingTarget.from_url(receiver.endpoint, sampling=sampling)
            ctx = TranslationContext(static_tls=tls, inline_routes=True, tracing=target)
            resources = workload_resources(mesh, WORKLOAD, ctx)
            listeners = [_with_access_log(listener, log) for listener in resources[LISTENER]]
            runtime = {"layers": [{"name": "tracer", "staticLayer": TRACER_RUNTIME}]}
            static = {"listeners": listeners, "clusters": resources[CLUSTER]}
            envoy({"staticResources": static, "layeredRuntime": runtime})
            return loopback, receiver, log

        yield start


def _parent(flags: str) -> dict[str, str]:
    return {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}"}


CASES = {
    "no-traceparent": {},
    "unsampled-parent": _parent("00"),
    "sampled-parent": _parent("01"),
}


def test_every_exported_span_is_tagged_and_unsampled_requests_skip_the_tagging(
    sidecar: Sidecar,
) -> None:
    address, receiver, log = sidecar(100.0)
    for case, headers in CASES.items():
        assert _get(address, f"/{case}", {"x-case": case, **headers}) == 200
    # the tagging filter ran exactly for the requests Envoy traces
    assert _logged(log, len(CASES)) == {
        "no-traceparent": "allow",
        "unsampled-parent": "-",
        "sampled-parent": "allow",
    }

    def by_case(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
        return {s.attributes["http.url"].rsplit("/", 1)[1]: s for s in spans}

    traced = by_case(receiver.wait_for(lambda spans: spans, count=2))
    assert sorted(traced) == ["no-traceparent", "sampled-parent"]
    for span in traced.values():
        assert span.service == SIDECAR
        assert span.attributes["meshwarden.authz.decision"] == "allow"
        assert span.attributes["meshwarden.authz.policy"] == "a/loopback"
        assert span.attributes["meshwarden.authz.rule"] == "0"


def test_a_sidecar_that_samples_nothing_runs_no_tagging(sidecar: Sidecar) -> None:
    """At 0 % Envoy exports no span, not even for a request its caller sampled (Envoy 1.40), so
    no request may need its tags."""
    address, receiver, log = sidecar(0.0)
    for case, headers in CASES.items():
        assert _get(address, f"/{case}", {"x-case": case, **headers}) == 200
    assert _logged(log, len(CASES)) == dict.fromkeys(CASES, "-")
    time.sleep(2.5)  # the tracer exports finished spans every second (TRACER_RUNTIME)
    assert receiver.spans == []
