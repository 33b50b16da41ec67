"""Decisions in OpenTelemetry, end to end: `meshwarden up --otlp-endpoint` with real Envoys
sends every request's span, tagged with the decision, to an OTLP receiver speaking the real
collector protocol — and the control plane's spans show the push that installed the rules."""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from meshwarden.demo import DemoIdp, OtlpReceiver, ReceivedSpan, otlp_receiver

from .._loopback import claim_net, free_port
from ._live import MeshwardenUp, exchange, http_server
from ._mesh import Document, app, jwt_issuer, mesh_document, policy, shop_pair, write

ISSUER = "https://idp.trace.example"


def traced_documents(values: dict[str, Any], methods: tuple[str, ...] = ("GET",)) -> list[Document]:
    """The shop pair; frontend may use `methods` on /api/*, /api/secret is denied, and a dry-run
    DENY would lock /api/beta; tokens of the corp IdP are verified at the backend."""
    return [
        mesh_document({"trustDomain": "trace.test", "defaultPolicy": "deny"}),
        *shop_pair(values["net"], values["front_out"], values["app_port"]),
        jwt_issuer(
            "shop/corp",
            "backend",
            {"issuer": ISSUER, "audiences": ["backend"], "jwks": values["jwks"]},
        ),
        policy(
            "shop/frontend-reads",
            selector="backend",
            rules=[
                {
                    "from": [{"workloads": app("frontend")}],
                    "to": [{"methods": list(methods), "paths": ["/api/*"]}],
                }
            ],
        ),
        policy(
            "shop/no-secrets",
            [{"to": [{"paths": ["/api/secret"]}]}],
            selector="backend",
            action="DENY",
        ),
        policy(
            "shop/lockdown-trial",
            [{"to": [{"paths": ["/api/beta"]}]}],
            selector="backend",
            action="DENY",
            mode="dry-run",
        ),
    ]


FRONTEND_ID = "spiffe://trace.test/ns/shop/sa/frontend-1"
SIDECAR = "shop/backend-1 sidecar"


class _TraceEchoApp(BaseHTTPRequestHandler):
    """The workload behind the sidecar: answers 200 with the traceparent it received."""

    def do_GET(self) -> None:
        body = (self.headers.get("traceparent") or "none").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class TracedMesh:
    receiver: OtlpReceiver
    up: MeshwardenUp
    values: dict[str, Any]
    idp: DemoIdp

    @property
    def front_out(self) -> int:
        return int(self.values["front_out"])

    @property
    def metrics_port(self) -> int:
        """The port `--metrics 127.0.0.1:0` bound, as `up` announced it on stderr."""
        found = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", self.up.log.read_text())
        assert found, self.up.log.read_text()[-3000:]
        return int(found[1])

    @property
    def health_port(self) -> int:
        """The port `--health 127.0.0.1:0` bound, from the `ready` line."""
        found = re.search(r"health http://127\.0\.0\.1:(\d+)/healthz", self.up.ready_line)
        assert found, self.up.ready_line
        return int(found[1])

    def call(self, method: str, path: str, token: str | None = None) -> tuple[int | str, str]:
        """Send one request from the frontend with a fresh sampled traceparent; (status,
        trace id)."""
        status, trace_id, _ = self.exchange(method, path, token)
        return status, trace_id

    def exchange(
        self, method: str, path: str, token: str | None = None
    ) -> tuple[int | str, str, str]:
        """(status, trace id, body: the traceparent the app received when allowed)."""
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        status, body = exchange("127.0.0.1", self.front_out, method, path, headers)
        return status, trace_id, body

    def sidecar_span(self, trace_id: str) -> ReceivedSpan:
        def found(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
            return [s for s in spans if s.trace_id == trace_id and s.service == SIDECAR]

        spans = self.receiver.wait_for(found)
        assert len(spans) == 1, f"expected one sidecar span in trace {trace_id}: {spans}"
        return spans[0]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedMesh]:
    root = tmp_path_factory.mktemp("traced")
    policies = root / "policies"
    policies.mkdir()
    idp = DemoIdp(ISSUER)
    values: dict[str, Any] = {
        "net": claim_net(),
        "front_out": free_port(),
        "app_port": free_port(),
        "issuer": ISSUER,
        "jwks": idp.jwks(),
    }
    write(policies / "mesh.yaml", traced_documents(values))
    with otlp_receiver() as receiver, http_server(values["app_port"], _TraceEchoApp):
        args = (
            "--otlp-endpoint",
            receiver.endpoint,
            *("--metrics", "127.0.0.1:0", "--health", "127.0.0.1:0"),  # ports they bind
        )
        up = MeshwardenUp(policies, root / "data", args)
        up.start()
        try:
            yield TracedMesh(receiver, up, values, idp)
        finally:
            assert up.stop() == 0, up.log.read_text()[-3000:]


def _authz(span: ReceivedSpan) -> dict[str, Any]:
    return {k: v for k, v in span.attributes.items() if k.startswith("meshwarden.authz.")}


def test_an_allowed_request_is_traced_with_its_policy_rule_and_source(traced: TracedMesh) -> None:
    status, trace_id, received = traced.exchange("GET", "/api/items")
    assert status == 200
    span = traced.sidecar_span(trace_id)
    # the app behind the sidecar continues the same trace, under the sidecar's span
    _, app_trace, parent, flags = received.split("-")
    assert (app_trace, parent, flags) == (trace_id, span.span_id, "01")
    assert _authz(span) == {
        "meshwarden.authz.decision": "allow",
        "meshwarden.authz.policy": "shop/frontend-reads",
        "meshwarden.authz.rule": "0",
        "meshwarden.authz.dry_run.decision": "allow",
        "meshwarden.authz.dry_run.policy": "default:allow",
    }
    assert span.attributes["meshwarden.source.spiffe_id"] == FRONTEND_ID
    assert span.attributes["meshwarden.destination.workload"] == "shop/backend-1"
    assert span.attributes["http.status_code"] == "200"
    assert len(span.attributes["meshwarden.policy.version"]) == 16


@pytest.mark.parametrize(
    ("method", "path", "policy", "rule"),
    [
        ("GET", "/api/secret", "shop/no-secrets", "0"),  # an explicit DENY
        ("POST", "/api/items", "default:deny", None),  # nothing allows it: never "none"
    ],
)
def test_a_denied_request_names_its_cause(
    traced: TracedMesh, method: str, path: str, policy: str, rule: str | None
) -> None:
    status, trace_id = traced.call(method, path)
    assert status == 403
    tags = _authz(traced.sidecar_span(trace_id))
    assert tags["meshwarden.authz.decision"] == "deny"
    assert tags["meshwarden.authz.policy"] == policy
    assert tags.get("meshwarden.authz.rule") == rule


def test_a_dry_run_policy_shows_what_it_would_have_done(traced: TracedMesh) -> None:
    status, trace_id = traced.call("GET", "/api/beta")
    assert status == 200  # dry-run never blocks
    tags = _authz(traced.sidecar_span(trace_id))
    assert tags["meshwarden.authz.decision"] == "allow"
    assert tags["meshwarden.authz.dry_run.decision"] == "deny"
    assert tags["meshwarden.authz.dry_run.policy"] == "shop/lockdown-trial"


def test_a_forged_token_is_traced_as_jwt_invalid(traced: TracedMesh) -> None:
    idp = traced.idp
    token = idp.token(idp.claims(aud="backend"), forged=True)
    status, trace_id = traced.call("GET", "/api/items", token)
    assert status == 401
    tags = _authz(traced.sidecar_span(trace_id))
    assert tags["meshwarden.authz.decision"] == "deny"
    assert tags["meshwarden.authz.policy"] == "jwt:invalid"


def test_the_push_that_installed_the_rules_is_found_from_a_decision(traced: TracedMesh) -> None:
    _, trace_id = traced.call("GET", "/api/items")
    version = traced.sidecar_span(trace_id).attributes["meshwarden.policy.version"]

    def pushes(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.name == "meshwarden.xds.push"
            and s.attributes.get("meshwarden.node") == "shop/backend-1"
            and s.attributes.get("meshwarden.policy.version") == version
        ]

    push = traced.receiver.wait_for(pushes)
    assert push, "no push span names the policy version the sidecar reported"
    assert push[0].attributes["xds.type"] == "Listener"
    assert push[0].attributes["xds.nonce"]
    assert push[0].service == "meshwarden"

    def reload(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.name == "meshwarden.policies.reload" and s.trace_id == push[0].trace_id
        ]

    loads = traced.receiver.wait_for(reload)
    assert loads and loads[0].attributes["meshwarden.policy.version"]
    assert push[0].parent_span_id == loads[0].span_id

    pushed = push[0].attributes["xds.version"]

    def acks(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.name == "meshwarden.xds.ack"
            and s.attributes.get("meshwarden.node") == "shop/backend-1"
            and s.attributes.get("xds.version") == pushed
        ]

    assert traced.receiver.wait_for(acks), "the push was never ACKed in the trace"


def test_a_policy_change_is_traced_from_reload_to_push(traced: TracedMesh, tmp_path: Path) -> None:
    mesh_file = traced.up.policies / "mesh.yaml"
    before = mesh_file.read_text()
    write(mesh_file, traced_documents(traced.values, methods=("GET", "POST")))
    try:

        def new_reload(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
            return [
                s
                for s in spans
                if s.name == "meshwarden.policies.reload"
                and s.attributes.get("meshwarden.policy.workloads_affected", 0) > 0
                and any(
                    p.parent_span_id == s.span_id and p.name == "meshwarden.xds.push" for p in spans
                )
            ]

        found = traced.receiver.wait_for(new_reload, count=2)
        assert len(found) >= 2  # the first load, and this change
        deadline = time.monotonic() + 60  # until the sidecar applied the push
        status, trace_id = traced.call("POST", "/api/items")
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            status, trace_id = traced.call("POST", "/api/items")
        assert status == 200
        assert _authz(traced.sidecar_span(trace_id))["meshwarden.authz.decision"] == "allow"
    finally:
        mesh_file.write_text(before)


def _scrape(port: int) -> dict[str, float]:
    """Prometheus text format → {'name{labels}': value}."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _sum(samples: dict[str, float], prefix: str, *labels: str) -> float:
    return sum(
        v
        for k, v in samples.items()
        if k.startswith(prefix) and all(label in k for label in labels)
    )


def test_metrics_are_served_for_prometheus(traced: TracedMesh) -> None:
    samples = _scrape(traced.metrics_port)
    assert _sum(samples, "meshwarden_xds_pushes_total", 'type="Listener"') >= 2
    assert _sum(samples, "meshwarden_xds_acks_total") >= 2
    assert _sum(samples, "meshwarden_xds_connected_sidecars") == 2
    ca = [v for k, v in samples.items() if k.startswith("meshwarden_ca_expiry_seconds")]
    assert ca and all(3600 < v <= 86400 for v in ca)  # the default 24 h CA
    svid = _sum(samples, "meshwarden_svid_expiry_seconds", FRONTEND_ID)
    assert 0 < svid <= 3600  # the default 1 h SVID


def test_spans_and_the_flow_log_report_the_same_decisions(traced: TracedMesh) -> None:
    """Two readers of Envoy's metadata — the Lua filter tagging spans and the control plane
    parsing access logs — must tell the same story for every kind of decision."""
    idp = traced.idp
    forged = idp.token(idp.claims(aud="backend"), forged=True)
    calls = [
        traced.call("GET", "/api/items"),
        traced.call("GET", "/api/secret"),
        traced.call("POST", "/api/items"),
        traced.call("GET", "/api/beta"),
        traced.call("GET", "/api/items", forged),
    ]
    url = f"http://127.0.0.1:{traced.health_port}/flows"
    wanted = {trace_id for _, trace_id in calls}

    def flows() -> dict[str, dict[str, Any]]:
        body = urllib.request.urlopen(url, timeout=5).read()
        records = json.loads(body)
        records = records.get("flows", records) if isinstance(records, dict) else records
        return {r["traceId"]: r for r in records if r["traceId"] in wanted}

    by_trace: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60  # the sidecars flush their records every 0.25 s
    while time.monotonic() < deadline:
        by_trace = flows()
        if len(by_trace) == len(wanted):
            break
        time.sleep(0.2)
    assert set(by_trace) == wanted
    for status, trace_id in calls:
        tags = _authz(traced.sidecar_span(trace_id))
        flow = by_trace[trace_id]
        assert flow["status"] == status
        assert flow["decision"] == tags["meshwarden.authz.decision"]
        assert flow["policy"] == tags["meshwarden.authz.policy"]
        rule = tags.get("meshwarden.authz.rule")
        assert flow["rule"] == (int(rule) if rule is not None else None)
        dry = flow["dryRun"] or {}
        assert dry.get("decision") == tags.get("meshwarden.authz.dry_run.decision")
        assert dry.get("policy") == tags.get("meshwarden.authz.dry_run.policy")
    samples = _scrape(traced.metrics_port)
    assert _sum(samples, "meshwarden_authz_decisions_total", 'policy="shop/no-secrets"') >= 1
    assert _sum(samples, "meshwarden_authz_decisions_total", 'policy="jwt:invalid"') >= 1


def test_the_agent_traces_the_svids_it_signs(traced: TracedMesh) -> None:
    def signing(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.name == "meshwarden.agent.sign_svids"
            and FRONTEND_ID in s.attributes.get("meshwarden.spiffe_ids", [])
        ]

    spans = traced.receiver.wait_for(signing)
    assert spans, "no span for the SVIDs the agent fetched at start"
    assert spans[0].status_code != 2  # none refused


def test_a_flow_record_names_the_trace_envoy_started_for_a_caller_without_traceparent(
    traced: TracedMesh,
) -> None:
    path = f"/api/untraced-{secrets.token_hex(4)}"
    status, _ = exchange("127.0.0.1", traced.front_out, "GET", path)  # no traceparent
    assert status == 200
    url = f"http://127.0.0.1:{traced.health_port}/flows"
    flows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = json.loads(urllib.request.urlopen(url, timeout=5).read())["flows"]
        flows = [r for r in records if r["path"] == path]
        if flows:
            break
        time.sleep(0.2)
    assert len(flows) == 1 and flows[0]["traceId"]

    def sidecar(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.service == SIDECAR and s.attributes.get("http.url", "").endswith(path)
        ]

    [span] = traced.receiver.wait_for(sidecar)
    assert flows[0]["traceId"] == span.trace_id
