"""`meshwarden up --otlp-endpoint` with `enforcement: ext-authz`: the sidecars ask the control
plane over their mTLS connection to it (the production path), which decides for the workload
the connection proves and traces each decision as a child of the request's span. Both
transports: gRPC Check, and `extAuthz.transport: http` (the engine's HTTP front, mTLS too)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from meshwarden.xds import EXT_AUTHZ_GRPC_CLUSTER, EXT_AUTHZ_HTTP_CLUSTER

from meshwarden._sidecars import admin_request
from meshwarden.demo import OtlpReceiver, ReceivedSpan, otlp_receiver

from .._loopback import claim_net, free_port
from ._live import MeshwardenUp, exchange, request, sample_app
from ._mesh import Document, app, mesh_document, policy, shop_pair, upstream, workload, write

FRONTEND_ID = "spiffe://live.test/ns/shop/sa/frontend-1"
SIDECAR = "shop/backend-1 sidecar"
ENVOY_CHECK = "async envoy.service.auth.v3.Authorization.Check egress"  # Envoy's span of the call
ENVOY_HTTP_CHECK = "async meshwarden-ext-authz-http egress"  # the same over HTTP (its cluster)


def ext_authz_mesh(
    net: str, front_out: int, ops_out: int, app_port: int, transport: str = "grpc"
) -> list[Document]:
    """The shop pair plus ops-1 (an upstream to the backend too), enforced by ext-authz: only the
    frontend may reach /api/*."""
    mesh = {
        "trustDomain": "live.test",
        "mtls": "PERMISSIVE",
        "defaultPolicy": "deny",
        "enforcement": "ext-authz",
        "extAuthz": {"transport": transport},
    }
    ops = {"addresses": [f"{net}.5"], "upstreams": [upstream("shop/backend", 8080, ops_out)]}
    rule = {"from": [{"workloads": app("frontend")}], "to": [{"paths": ["/api/*"]}]}
    return [
        mesh_document(mesh),
        *shop_pair(net, front_out, app_port),
        workload("ops/ops-1", "ops", ops),
        policy("shop/backend-access", [rule], selector="backend"),
    ]


@dataclass
class Live:
    values: dict[str, int | str]
    receiver: OtlpReceiver
    transport: str
    data: Path

    def call(self, path: str) -> tuple[int | str, str, str]:
        """GET `path` from the frontend with a sampled traceparent: (status, body, trace id)."""
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        status, body = exchange("127.0.0.1", int(self.values["front_out"]), "GET", path, headers)
        return status, body, trace_id

    def trace(self, trace_id: str, names: set[str]) -> list[ReceivedSpan]:
        """The spans of a trace once one of each of `names` has arrived."""

        def found(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
            mine = [s for s in spans if s.trace_id == trace_id]
            return mine if names <= {s.name for s in mine} else []

        return self.receiver.wait_for(found)


@pytest.fixture(scope="module")
def live(ext_authz_transport: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    transport = ext_authz_transport
    root = tmp_path_factory.mktemp(f"ext-authz-live-{transport}")
    values: dict[str, int | str] = {
        "net": claim_net(),
        "front_out": free_port(),
        "ops_out": free_port(),
        "app_port": free_port(),
    }
    policies = root / "policies"
    policies.mkdir()
    ports = {k: int(v) for k, v in values.items() if k != "net"}
    write(policies / "mesh.yaml", ext_authz_mesh(str(values["net"]), **ports, transport=transport))
    with otlp_receiver() as receiver, sample_app(int(values["app_port"])):
        up = MeshwardenUp(policies, Path(root / "data"), ("--otlp-endpoint", receiver.endpoint))
        up.start()
        try:
            yield Live(values, receiver, transport, root / "data")
        finally:
            assert up.stop() == 0, up.log.read_text()[-3000:]


def test_sidecars_in_ext_authz_mode_enforce_the_engines_verdicts_over_mtls(live: Live) -> None:
    frontend, ops, net = (
        int(live.values["front_out"]),
        int(live.values["ops_out"]),
        live.values["net"],
    )
    assert request("127.0.0.1", frontend, "GET", "/api/items") == 200
    status, body = exchange("127.0.0.1", frontend, "GET", "/admin/x")
    assert (status, body) == (403, "ext_authz: access denied by default:deny")
    assert request("127.0.0.1", ops, "GET", "/api/items") == 403
    assert request(f"{net}.3", 8080, "GET", "/api/items", source=f"{net}.9") == 403


def _front_requests(live: Live) -> int:
    """Requests the backend's sidecar sent on its cluster to `up`'s ext_authz front for its
    transport (gRPC Check over h2, or HTTP/1.1)."""
    cluster = {"grpc": EXT_AUTHZ_GRPC_CLUSTER, "http": EXT_AUTHZ_HTTP_CLUSTER}[live.transport]
    name = f"cluster.{cluster}.upstream_rq_total"
    admin = live.data / "sidecars" / "shop_backend-1.admin.sock"
    status, body = admin_request(admin, f"/stats?filter=^{name}$")
    assert status == 200, body
    return sum(int(line.split(": ")[1]) for line in body.splitlines() if line.startswith(name))


def test_up_bootstraps_its_sidecars_with_its_ext_authz_front_and_they_check_there(
    live: Live,
) -> None:
    """Under `up` (the front on its own event loop) the sidecars' checks — gRPC Check too — go
    to the front, not over the ADS connection (once the sidecar's snapshot follows the
    bootstrap it declared)."""
    frontend = int(live.values["front_out"])
    before = _front_requests(live)
    deadline = time.monotonic() + 30
    while _front_requests(live) == before and time.monotonic() < deadline:
        assert request("127.0.0.1", frontend, "GET", "/api/items") == 200
        time.sleep(0.2)
    assert _front_requests(live) > before


@pytest.mark.parametrize(
    ("path", "status", "decision", "policy"),
    [
        ("/api/items", 200, "allow", "shop/backend-access"),
        ("/admin/x", 403, "deny", "default:deny"),
    ],
)
def test_each_decision_is_a_span_in_the_requests_trace_with_its_cause(
    live: Live, path: str, status: int, decision: str, policy: str
) -> None:
    got, _, trace_id = live.call(path)
    assert got == status
    envoy_call = ENVOY_CHECK if live.transport == "grpc" else ENVOY_HTTP_CHECK
    spans = live.trace(trace_id, {"meshwarden.authz.check", envoy_call, "ingress"})
    by_id = {s.span_id: s for s in spans}
    [check] = [s for s in spans if s.name == "meshwarden.authz.check"]
    # the engine's span ← Envoy's span of the Check call ← the sidecar's span of the request
    egress = by_id[check.parent_span_id]
    request_span = by_id[egress.parent_span_id]
    assert (egress.service, request_span.service, request_span.name) == (
        SIDECAR,
        SIDECAR,
        "ingress",
    )
    assert check.service == "meshwarden"
    assert check.attributes["meshwarden.authz.decision"] == decision
    assert check.attributes["meshwarden.authz.policy"] == policy
    assert check.attributes["meshwarden.source.spiffe_id"] == FRONTEND_ID
    assert check.attributes["meshwarden.destination.workload"] == "shop/backend-1"
    # the request's span reads the same verdict from the dynamic metadata the engine answered
    assert request_span.attributes["meshwarden.authz.decision"] == decision
    assert request_span.attributes["meshwarden.authz.policy"] == policy
