"""ext_authz mode: CheckRequest → the engine's Request, Decision → verdict metadata, the caller
→ its workload, the decision span, and the filters Envoy accepts."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
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
    CheckResponse,
)
from envoy_data_plane.google.protobuf import Struct
from meshwarden.engine import Cause, CompiledMesh, Request, check_documents, decide, parse_text
from meshwarden.xds._bootstrap import XDS_CLUSTER, bootstrap, envoy_binary
from meshwarden.xds._check import CheckAttributes, decode_check, request_of
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._decisions import Verdict
from meshwarden.xds._ext_authz import (
    SPAN_NAME,
    Authorization,
    _response,
    registered_workload,
    verdict_of,
)
from meshwarden.xds._ext_authz_filter import JWT_AUTHN_NS, PORT_HEADER, WORKLOAD_HEADER
from meshwarden.xds._predicates import JWT_PAYLOAD_KEY
from meshwarden.xds._snapshot import CLUSTER, LISTENER
from meshwarden.xds._translate import workload_resources
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TD = "example.org"
CALLER = f"spiffe://{TD}/ns/b/sa/client"
SERVER_ID = f"spiffe://{TD}/ns/a/sa/api"


def _mesh(
    *policies: dict[str, Any],
    mesh: dict[str, Any] | None = None,
    overrides: dict[str, str] | None = None,
) -> CompiledMesh:
    """api-1 and api-2 (one identity), c/solo, and `policies` in namespace a; `overrides`:
    workload name → its own `enforcement`."""
    docs: list[dict[str, Any]] = [
        {
            "kind": "Mesh",
            "metadata": {"name": "m"},
            "spec": {"trustDomain": TD, "enforcement": "ext-authz", **(mesh or {})},
        },
        *(
            {
                "kind": "Workload",
                "metadata": {"name": name, "namespace": "a", "labels": {"app": "api"}},
                "spec": {
                    "serviceAccount": "api",
                    "addresses": [address],
                    "ports": [{"port": 8080, "protocol": "http"}, {"port": 9000}],
                },
            }
            for name, address in (("api-1", "10.0.0.1"), ("api-2", "10.0.0.2"))
        ),
        {
            "kind": "Workload",
            "metadata": {"name": "solo", "namespace": "c"},
            "spec": {"ports": [{"port": 8080, "protocol": "http"}]},
        },
        *(
            {
                "kind": "AuthorizationPolicy",
                "metadata": {"name": f"p{i}", "namespace": "a"},
                "spec": spec,
            }
            for i, spec in enumerate(policies)
        ),
    ]
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
        if doc["kind"] == "Workload" and doc["metadata"]["name"] in (overrides or {}):
            doc["spec"]["enforcement"] = (overrides or {})[doc["metadata"]["name"]]
    documents, problems = parse_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, [str(d) for d in found]
    return compiled


def _check(
    principal: str = CALLER, *, path: str | None = "/api/x", claims: Any = None
) -> CheckAttributes:
    """A CheckRequest as Envoy sends it (encoded by the envoy-data-plane classes), decoded."""
    http = None
    if path is not None:
        http = AttributeContextHttpRequest(
            method="POST",
            path=path,
            host="api.a:8080",
            headers={":path": path, "x-tenant": "acme", "traceparent": _TRACEPARENT},
        )
    context = None
    if claims is not None:
        payload = Struct.from_dict({JWT_PAYLOAD_KEY: claims})
        context = Metadata(filter_metadata={JWT_AUTHN_NS: payload})
    return decode_check(
        bytes(
            CheckRequest(
                attributes=AttributeContext(
                    source=AttributeContextPeer(
                        principal=principal,
                        address=Address(
                            socket_address=SocketAddress(address="10.1.2.3", port_value=40000)
                        ),
                    ),
                    destination=AttributeContextPeer(
                        principal=SERVER_ID,
                        address=Address(
                            socket_address=SocketAddress(address="10.0.0.1", port_value=8080)
                        ),
                    ),
                    request=AttributeContextRequest(time=_NOW, http=http) if http else None,
                    metadata_context=context,
                )
            )
        )
    )


_NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
_TRACEPARENT = f"00-{_TRACE_ID}-00f067aa0ba902b7-01"


# --------------------------------------------------------------------------- request mapping


def test_a_check_request_maps_to_the_engines_request() -> None:
    claims = {"iss": "https://idp", "sub": "alice", "exp": 1700000000, "groups": ["dev"]}
    got = request_of(_check(path="/api//v1/../items?x=1", claims=claims), "a/api-1", 8080)
    assert got == Request.build(
        "a/api-1",
        8080,
        identity=CALLER,
        source_ip="10.1.2.3",
        method="POST",
        path="/api/items",
        host="api.a:8080",
        headers={":path": "/api//v1/../items?x=1", "x-tenant": "acme", "traceparent": _TRACEPARENT},
        jwt_claims=claims,
    )
    assert isinstance(got.jwt_claims and got.jwt_claims["exp"], int)  # not 1.7e9 as a double


def test_a_plaintext_peer_has_no_identity_and_a_tcp_check_no_http_attributes() -> None:
    got = request_of(_check(principal="", path=None), "a/api-1", 9000)
    assert got.identity is None and str(got.source_ip) == "10.1.2.3"
    assert (got.method, got.path, got.jwt_claims, dict(got.headers)) == (None, None, None, {})


# --------------------------------------------------------------------------- verdicts


def _verdict(compiled: CompiledMesh, identity: str = CALLER, path: str = "/api/x") -> Verdict:
    plan = compiled.plan("a/api-1")
    return verdict_of(
        plan,
        decide(plan, Request.build("a/api-1", 8080, identity=identity, method="GET", path=path)),
    )


ALLOW_CALLER = {"rules": [{"from": [{"identities": [CALLER]}]}]}
DENY_ADMIN = {"action": "DENY", "rules": [{"to": [{"ports": ["8080"], "paths": ["/admin/*"]}]}]}


def test_verdicts_name_the_policy_and_rule_or_the_default_cause() -> None:
    compiled = _mesh(ALLOW_CALLER, DENY_ADMIN)
    assert _verdict(compiled) == Verdict("allow", "a/p0", 0)
    assert _verdict(compiled, path="/admin/x") == Verdict("deny", "a/p1", 0)
    assert _verdict(compiled, identity=SERVER_ID) == Verdict("deny", "default:deny")
    assert _verdict(_mesh()) == Verdict("allow", "default:allow")


@pytest.mark.parametrize(
    ("dry_run", "path", "expected"),
    [
        ([DENY_ADMIN], "/admin/x", ("deny", "a/p0")),  # a matching dry-run DENY
        ([DENY_ADMIN], "/api/x", ("allow", "default:allow")),  # dry-run DENY only, no match
        ([ALLOW_CALLER], "/api/x", ("allow", "a/p0")),  # a matching dry-run ALLOW
        ([{"rules": []}], "/api/x", ("deny", "default:deny")),  # dry-run ALLOW, no match
        ([ALLOW_CALLER, DENY_ADMIN], "/admin/x", ("deny", "a/p1")),  # DENY wins over ALLOW
    ],
)
def test_dry_run_verdicts_follow_the_shared_vocabulary(
    dry_run: list[dict[str, Any]], path: str, expected: tuple[str, str]
) -> None:
    compiled = _mesh(*({**spec, "mode": "dry-run"} for spec in dry_run))
    got = _verdict(compiled, path=path)
    assert (got.decision, got.policy) == ("allow", "default:allow")  # dry-run never enforces
    assert (got.dry_run_decision, got.dry_run_policy) == expected


def test_only_audit_dry_run_policies_leave_no_dry_run_verdict() -> None:
    compiled = _mesh({"action": "AUDIT", "mode": "dry-run", "rules": [{}]})
    assert _verdict(compiled) == Verdict("allow", "default:allow")


# --------------------------------------------------------------------------- responses


def _parsed(encoded: bytes) -> tuple[int, dict[str, Any], Any]:
    response = CheckResponse.parse(encoded)
    assert response.status is not None and response.dynamic_metadata is not None
    return response.status.code, response.dynamic_metadata.to_dict(), response.denied_response


def test_an_allow_answers_ok_with_the_verdict_as_dynamic_metadata() -> None:
    verdict = Verdict("allow", "a/p0", 2, "deny", "default:deny")
    code, metadata, denied = _parsed(_response(verdict, ""))
    assert (code, denied) == (0, None)
    assert Verdict.from_metadata(metadata) == verdict and metadata["rule"] == 2


def test_a_denial_answers_403_with_a_body_naming_the_cause() -> None:
    code, metadata, denied = _parsed(_response(Verdict("deny", "a/p1", 0), ""))
    assert code == 7 and metadata == {"decision": "deny", "policy": "a/p1", "rule": 0}
    assert denied.status.code.value == 403
    assert denied.body == "ext_authz: access denied by a/p1#0"
    _, _, refused_token = _parsed(_response(Verdict("deny", "jwt:invalid"), ""))
    assert refused_token.status.code.value == 401


# --------------------------------------------------------------------------- who is asking


class _Context:
    def __init__(self, peer: str | None, **metadata: str) -> None:
        self.peer = peer
        self.metadata = tuple(metadata.items())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def _resolver(compiled: CompiledMesh | None) -> Any:
    return registered_workload(lambda: compiled, lambda context: context.peer)


def test_the_protected_workload_is_the_callers_own() -> None:
    resolve = _resolver(_mesh())
    solo = f"spiffe://{TD}/ns/c/sa/solo"
    assert resolve(_Context(solo), {}).workload.ref == "c/solo"
    # two workloads share the identity: the filter's name picks one of them, never another's
    assert resolve(_Context(SERVER_ID), {WORKLOAD_HEADER: "a/api-2"}).workload.ref == "a/api-2"
    with pytest.raises(PermissionError, match="exactly one"):
        resolve(_Context(SERVER_ID), {})
    with pytest.raises(PermissionError, match="not the identity of workload 'a/api-1'"):
        resolve(_Context(solo), {WORKLOAD_HEADER: "a/api-1"})


def test_callers_that_are_not_registered_workloads_are_refused() -> None:
    with pytest.raises(PermissionError, match="no client certificate"):
        _resolver(_mesh())(_Context(None), {})
    with pytest.raises(PermissionError):
        _resolver(_mesh())(_Context(CALLER), {WORKLOAD_HEADER: "a/api-1"})
    with pytest.raises(LookupError, match="no policies"):
        _resolver(None)(_Context(SERVER_ID), {})


def _traced() -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def test_check_decides_for_the_callers_workload_in_a_child_span_of_the_request() -> None:
    tracer, spans = _traced()
    authorization = Authorization(_resolver(_mesh(ALLOW_CALLER)), tracer)
    context = _Context(SERVER_ID, **{WORKLOAD_HEADER: "a/api-1", PORT_HEADER: "8080"})
    answer = asyncio.run(authorization.check(_check(), context))  # type: ignore[arg-type]
    assert Verdict.from_metadata(_parsed(answer)[1]) == Verdict("allow", "a/p0", 0)
    [span] = spans.get_finished_spans()
    assert span.name == SPAN_NAME and span.kind == trace.SpanKind.SERVER
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{span.context.trace_id:032x}" == _TRACE_ID
    assert dict(span.attributes or {}) == {
        "meshwarden.authz.decision": "allow",
        "meshwarden.authz.policy": "a/p0",
        "meshwarden.authz.rule": "0",
        "meshwarden.source.spiffe_id": CALLER,
        "meshwarden.destination.workload": "a/api-1",
    }


def test_every_check_is_timed_in_a_histogram_by_decision_and_workload() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    tracer, _ = _traced()
    meters = MeterProvider(metric_readers=[reader])
    authorization = Authorization(_resolver(_mesh(ALLOW_CALLER)), tracer, meter_provider=meters)
    context = _Context(SERVER_ID, **{WORKLOAD_HEADER: "a/api-1", PORT_HEADER: "8080"})
    for _ in range(3):
        asyncio.run(authorization.check(_check(), context))  # type: ignore[arg-type]
    asyncio.run(authorization.check(_check(), _Context(CALLER)))  # type: ignore[arg-type]
    data = reader.get_metrics_data()
    [metric] = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "meshwarden.authz.check.duration"
    ]
    counts = {
        (p.attributes["decision"], p.attributes["workload"]): p.count
        for p in metric.data.data_points
    }
    assert counts == {("allow", "a/api-1"): 3, ("deny", ""): 1}


def test_envoys_span_in_the_call_metadata_is_the_parent_when_there_is_one() -> None:
    tracer, spans = _traced()
    envoy_span = f"00-{_TRACE_ID}-1111111111111111-01"
    context = _Context(
        SERVER_ID, **{WORKLOAD_HEADER: "a/api-1", PORT_HEADER: "8080", "traceparent": envoy_span}
    )
    asyncio.run(Authorization(_resolver(_mesh()), tracer).check(_check(), context))  # type: ignore[arg-type]
    [span] = spans.get_finished_spans()
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "1111111111111111"


def test_a_refused_caller_is_denied_even_by_a_fail_open_sidecar() -> None:
    tracer, spans = _traced()
    authorization = Authorization(_resolver(_mesh()), tracer)
    answer = asyncio.run(authorization.check(_check(), _Context(CALLER)))  # type: ignore[arg-type]
    code, metadata, denied = _parsed(answer)
    assert code == 7 and Verdict.from_metadata(metadata) == Verdict("deny", Cause.AUTHZ_UNAVAILABLE)
    assert "cannot decide for this caller" in denied.body
    [span] = spans.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR


# --------------------------------------------------------------------------- Envoy config


def test_ext_authz_filters_carry_the_mesh_settings_and_pass_envoy_validation(
    tmp_path: Path,
) -> None:
    compiled = _mesh(mesh={"mtls": "PERMISSIVE", "extAuthz": {"failOpen": True, "timeout": "40ms"}})
    resources = workload_resources(
        compiled, "a/api-1", TranslationContext(ext_authz_cluster=XDS_CLUSTER)
    )
    text = json.dumps(resources[LISTENER])
    assert "envoy.filters.http.rbac" not in text and "envoy.filters.network.rbac" not in text
    configs = [c for c in _typed_configs(resources[LISTENER]) if "ExtAuthz" in c["@type"]]
    assert len(configs) == 4  # (http, tcp) × (mTLS, plaintext) chains
    for config in configs:
        service = config["grpcService"]
        assert service["envoyGrpc"] == {"clusterName": XDS_CLUSTER}
        assert (service["timeout"], config["failureModeAllow"]) == ("0.04s", True)
        metadata = {m["key"]: m["value"] for m in service["initialMetadata"]}
        assert metadata[WORKLOAD_HEADER] == "a/api-1" and metadata[PORT_HEADER] in ("8080", "9000")
    config = bootstrap(
        "a/api-1",
        "127.0.0.1",
        15010,
        str(tmp_path / "sds.sock"),
        server_id=f"spiffe://{TD}/meshwarden/server",
    )
    config["staticResources"]["clusters"] += resources[CLUSTER]
    config["staticResources"]["listeners"] = resources[LISTENER]
    (tmp_path / "envoy.json").write_text(json.dumps(config))
    command = [envoy_binary(), "--mode", "validate", "-c", str(tmp_path / "envoy.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fail_closed_is_the_default() -> None:
    resources = workload_resources(_mesh(), "a/api-1", TranslationContext(ext_authz_cluster="x"))
    configs = [c for c in _typed_configs(resources[LISTENER]) if "ExtAuthz" in c["@type"]]
    assert configs and all(c["failureModeAllow"] is False for c in configs)
    http = [c for c in configs if "statusOnError" in c]
    assert http and all(c["statusOnError"] == {"code": "Forbidden"} for c in http)
    assert all(c["grpcService"]["timeout"] == "0.25s" for c in configs)


@pytest.mark.parametrize(
    ("mesh_mode", "api_1", "api_2"),
    [("envoy-rbac", "ext_authz", "rbac"), ("ext-authz", "rbac", "ext_authz")],
)
def test_a_workload_may_override_the_meshs_enforcement_either_way(
    mesh_mode: str, api_1: str, api_2: str
) -> None:
    other = {"envoy-rbac": "ext-authz", "ext-authz": "envoy-rbac"}[mesh_mode]
    compiled = _mesh(mesh={"enforcement": mesh_mode}, overrides={"api-1": other})
    ctx = TranslationContext(ext_authz_cluster="x")
    for name, filters in (("api-1", api_1), ("api-2", api_2)):
        text = json.dumps(workload_resources(compiled, f"a/{name}", ctx)[LISTENER])
        missing = "rbac" if filters == "ext_authz" else "ext_authz"
        assert f"envoy.filters.http.{filters}" in text, name
        assert f"envoy.filters.http.{missing}" not in text, name


def test_without_an_ext_authz_cluster_translation_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="a/api-1: ext-authz enforcement needs"):
        workload_resources(_mesh(), "a/api-1", TranslationContext())


def _typed_configs(listeners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for listener in listeners:
        for chain in listener["filterChains"]:
            for network in chain["filters"]:
                typed = network["typedConfig"]
                out.append(typed)
                out += [h["typedConfig"] for h in typed.get("httpFilters", [])]
    return out
