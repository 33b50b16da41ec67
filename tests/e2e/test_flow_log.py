"""The flow log on a live mesh: real Envoy sidecars stream their access logs to `meshwarden up`,
and `meshwarden flows` — run as a user runs it — returns exactly the requests sent, each with
its cause (policy and rule, or the default), dry-run outcome, source and trace id."""

from __future__ import annotations

import json
import secrets
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .._loopback import claim_net, free_port
from ._live import MeshwardenUp, request, sample_app
from ._mesh import Document, app, mesh_document, policy, port, service, upstream, workload, write


def flow_mesh(net: str, front_http: int, front_tcp: int, app_port: int) -> list[Document]:
    """frontend-1 → backend-1 over HTTP 8080 and tcp 9000; plaintext `net`.9 may GET /public;
    /api/secret is denied, and a dry-run DENY would lock /api/items."""
    frontend = [{"workloads": app("frontend")}]
    allow = [
        {"from": frontend, "to": [{"ports": [8080], "methods": ["GET"], "paths": ["/api/*"]}]},
        {
            "from": [{"ipBlocks": [f"{net}.9/32"]}],
            "to": [{"ports": [8080], "methods": ["GET"], "paths": ["/public"]}],
        },
        {"from": frontend, "to": [{"ports": [9000]}]},
    ]
    return [
        mesh_document({"trustDomain": "flows.test", "mtls": "PERMISSIVE", "defaultPolicy": "deny"}),
        workload(
            "shop/frontend-1",
            "frontend",
            {
                "addresses": [f"{net}.2"],
                "upstreams": [
                    upstream("shop/backend", 8080, front_http),
                    upstream("shop/backend", 9000, front_tcp),
                ],
            },
        ),
        workload(
            "shop/backend-1",
            "backend",
            {
                "addresses": [f"{net}.3"],
                "ports": [port(8080, app_port), port(9000, app_port, "tcp")],
            },
        ),
        service(
            "shop/backend",
            "backend",
            [{"port": 8080, "protocol": "http"}, {"port": 9000, "protocol": "tcp"}],
        ),
        policy("shop/backend-access", allow, selector="backend"),
        policy(
            "shop/no-secrets",
            [{"to": [{"ports": [8080], "paths": ["/api/secret"]}]}],
            selector="backend",
            action="DENY",
        ),
        policy(
            "shop/try-lockdown",
            [{"to": [{"ports": [8080], "paths": ["/api/items"]}]}],
            selector="backend",
            action="DENY",
            mode="dry-run",
        ),
    ]


FRONTEND = "spiffe://flows.test/ns/shop/sa/frontend-1"
BACKEND = "shop/backend-1"


class FlowMesh:
    def __init__(self, root: Path, net: str) -> None:
        self.net = net
        self.values = {
            "net": net,
            "front_http": free_port(),
            "front_tcp": free_port(),
            "app_port": free_port(),
        }
        policies = root / "policies"
        policies.mkdir()
        ports = {k: v for k, v in self.values.items() if k != "net"}
        write(policies / "mesh.yaml", flow_mesh(net, **ports))
        self.up = MeshwardenUp(policies, root / "data")

    @property
    def server(self) -> str:
        return self.up.ready_line.split("health ")[1].split(",")[0]

    def traced(self, method: str, path: str, source: str | None = None) -> tuple[Any, str]:
        """(status, trace id) of one request carrying a fresh `traceparent`."""
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        if source is None:
            status = request("127.0.0.1", self.values["front_http"], method, path, headers)
        else:
            status = request(f"{self.net}.3", 8080, method, path, headers, source=source)
        return status, trace_id

    def tcp(self, host: str, port: int, source: str | None = None) -> bytes:
        """What a tcp connection gets back for an HTTP request sent over it."""
        bind = (source, 0) if source else None
        with socket.create_connection((host, port), timeout=10, source_address=bind) as conn:
            conn.sendall(b"GET /raw HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            try:
                return conn.recv(64)
            except ConnectionError:
                return b""

    def flows(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshwarden", "flows", "--server", self.server, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def flows_json(self, *args: str) -> list[dict[str, Any]]:
        result = self.flows(*args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowMesh]:
    # A network of its own: no other test of this run or of a run beside it listens there.
    flow_mesh = FlowMesh(tmp_path_factory.mktemp("flows"), claim_net())
    with sample_app(flow_mesh.values["app_port"]):
        flow_mesh.up.start()
        try:
            yield flow_mesh
        finally:
            assert flow_mesh.up.stop() == 0, flow_mesh.up.log.read_text()[-3000:]


def _wait_for_count(mesh: FlowMesh, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The flow log's ingress records once there are `count` (sidecars flush every 0.25 s);
    the frontend's own egress records are test_egress_flows.py's subject."""
    deadline = time.monotonic() + timeout
    flows = mesh.flows_json("--direction", "ingress")
    while len(flows) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        flows = mesh.flows_json("--direction", "ingress")
    return flows


def _cause(flow: dict[str, Any]) -> tuple[Any, ...]:
    dry = flow["dryRun"]
    return (
        flow["source"],
        flow["workload"],
        flow["port"],
        flow["method"],
        flow["path"],
        flow["status"],
        flow["decision"],
        flow["policy"],
        flow["rule"],
        (dry["decision"], dry["policy"]) if dry else None,
    )


def test_flows_return_exactly_the_requests_sent_with_their_causes(mesh: FlowMesh) -> None:
    ip9 = f"{mesh.net}.9"
    sent = [
        (
            mesh.traced("GET", "/api/items"),
            (
                FRONTEND,
                BACKEND,
                8080,
                "GET",
                "/api/items",
                200,
                "allow",
                "shop/backend-access",
                0,
                ("deny", "shop/try-lockdown"),
            ),
        ),
        (
            mesh.traced("GET", "/api/secret"),
            (
                FRONTEND,
                BACKEND,
                8080,
                "GET",
                "/api/secret",
                403,
                "deny",
                "shop/no-secrets",
                0,
                ("allow", "default:allow"),
            ),
        ),
        (
            mesh.traced("POST", "/api/items"),
            (
                FRONTEND,
                BACKEND,
                8080,
                "POST",
                "/api/items",
                403,
                "deny",
                "default:deny",
                None,
                ("deny", "shop/try-lockdown"),
            ),
        ),
        (
            mesh.traced("GET", "/public", source=ip9),
            (
                ip9,
                BACKEND,
                8080,
                "GET",
                "/public",
                200,
                "allow",
                "shop/backend-access",
                1,
                ("allow", "default:allow"),
            ),
        ),
    ]
    assert [status for (status, _), _ in sent] == [200, 403, 403, 200]
    flows = _wait_for_count(mesh, len(sent))
    by_trace = {flow["traceId"]: flow for flow in flows}
    assert len(flows) == len(sent) and set(by_trace) == {trace for (_, trace), _ in sent}, flows
    for (_, trace_id), expected in sent:
        assert _cause(by_trace[trace_id]) == expected
        assert by_trace[trace_id]["sourceIdentity"] == (FRONTEND if expected[0] != ip9 else None)


def test_tcp_connections_name_the_policy_that_allowed_or_refused_them(mesh: FlowMesh) -> None:
    before = len(mesh.flows_json("--direction", "ingress"))
    assert mesh.tcp("127.0.0.1", mesh.values["front_tcp"]).startswith(b"HTTP/1.")
    assert mesh.tcp(f"{mesh.net}.3", 9000, source=f"{mesh.net}.10") == b""  # no rule: refused
    flows = _wait_for_count(mesh, before + 2)[before:]
    causes = sorted(
        (f["source"], f["protocol"], f["port"], f["decision"], f["policy"], f["rule"])
        for f in flows
    )
    assert causes == [
        (f"{mesh.net}.10", "tcp", 9000, "deny", "default:deny", None),
        (FRONTEND, "tcp", 9000, "allow", "shop/backend-access", 2),
    ]


def test_flows_filter_by_denied_workload_and_age_and_print_a_table(mesh: FlowMesh) -> None:
    status, trace_id = mesh.traced("GET", "/api/secret")
    assert status == 403
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        denied = mesh.flows_json("--denied", "--since", "1m", "--workload", BACKEND)
        if any(f["traceId"] == trace_id for f in denied):
            break
        time.sleep(0.2)
    assert denied and all(f["decision"] == "deny" for f in denied)
    assert any(f["traceId"] == trace_id for f in denied)
    assert mesh.flows_json("--workload", "shop/frontend-1", "--direction", "ingress") == []
    while True:  # its egress, as source (the frontend's sidecar reports it on its own)
        from_frontend = mesh.flows_json("--workload", "shop/frontend-1")
        if from_frontend or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert from_frontend and {f["direction"] for f in from_frontend} == {"egress"}
    table = mesh.flows("--denied", "--limit", "1", "--direction", "ingress")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["TIME", "SOURCE", "DESTINATION"]
    for cell in (
        FRONTEND,
        f"{BACKEND}:8080",
        "GET /api/secret",
        "403",
        "deny",
        "shop/no-secrets#0",
        trace_id,
    ):
        assert cell in row
    bad = mesh.flows("--since", "soon")
    assert bad.returncode == 2 and "--since 'soon'" in bad.stderr


def test_follow_prints_new_records_as_they_arrive(mesh: FlowMesh) -> None:
    command = [
        sys.executable,
        "-m",
        "meshwarden",
        "flows",
        "--server",
        mesh.server,
        "--follow",
        "--since",
        "0",
        "--direction",
        "ingress",
        "-o",
        "json",
    ]
    follower = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        sent: list[str] = []
        ready: list[Any] = []
        deadline = time.monotonic() + 60  # a Python starting on a loaded host: seconds
        while not ready and time.monotonic() < deadline:  # send until the follower prints one
            status, trace_id = mesh.traced("GET", "/api/items")
            assert status == 200
            sent.append(trace_id)
            ready, _, _ = select.select([follower.stdout], [], [], 1.0)
        assert ready, f"no record within 60 s ({len(sent)} requests)"
        record = json.loads(follower.stdout.readline())
        assert record["traceId"] in sent and record["decision"] == "allow"
    finally:
        follower.terminate()
        follower.wait(10)
