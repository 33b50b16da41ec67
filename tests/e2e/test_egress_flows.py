"""Egress decisions in the flow log, on a live mesh: real Envoy sidecars report the connections
their outbound listeners allow or refuse (the source's egress policies), and `meshwarden flows`
— run as a user runs it — shows each with `direction: egress`, the deciding policy rule (the
same cause `meshwarden explain --from-workload` names) and what dry-run egress policies, or
monitor mode, would have done while the traffic passes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshwarden._sidecars import admin_request

from .._loopback import claim_net, free_port
from ._live import MeshwardenUp, request, sample_app
from ._mesh import (
    Document,
    app,
    document,
    mesh_document,
    port,
    service,
    upstream,
    workload,
    write,
)

TD = "egress-flows.test"
WEB = f"spiffe://{TD}/ns/shop/sa/web-1"
JOB = f"spiffe://{TD}/ns/ops/sa/job-1"


def egress_policy(
    ref: str, selector: str, rules: list[dict[str, Any]], action: str = "ALLOW", mode: str = ""
) -> Document:
    spec: dict[str, Any] = {"direction": "egress", "selector": app(selector), "action": action}
    spec |= {"mode": mode} if mode else {}
    return document("AuthorizationPolicy", ref, spec | {"rules": rules})


def egress_mesh(net: str, local: dict[str, int], app_port: int) -> list[Document]:
    """shop/web-1 may reach the api (a dry-run DENY would lock it) and is denied the db;
    ops/job-1, in a namespace in monitor mode, is only allowed the api but reaches both."""
    api, db = {"workloads": app("api")}, {"workloads": app("db")}
    shop_api = app("api") | {"namespaces": ["shop"]}
    monitor = {"ops": {"defaultMode": "dry-run"}}
    return [
        mesh_document({"trustDomain": TD, "namespaces": monitor}),
        workload(
            "shop/web-1",
            "web",
            {
                "addresses": [f"{net}.2"],
                "upstreams": [
                    upstream("shop/api", 8080, local["web_api"]),
                    upstream("shop/db", 9000, local["web_db"]),
                ],
            },
        ),
        workload(
            "ops/job-1",
            "job",
            {
                "addresses": [f"{net}.5"],
                "upstreams": [
                    upstream("shop/api", 8080, local["job_api"]),
                    upstream("shop/db", 9000, local["job_db"]),
                ],
            },
        ),
        workload("shop/api-1", "api", {"addresses": [f"{net}.3"], "ports": [port(8080, app_port)]}),
        workload(
            "shop/db-1", "db", {"addresses": [f"{net}.4"], "ports": [port(9000, app_port, "tcp")]}
        ),
        service("shop/api", "api", [{"port": 8080, "protocol": "http"}]),
        service("shop/db", "db", [{"port": 9000, "protocol": "tcp"}]),
        egress_policy("shop/web-egress", "web", [{"to": [api]}, {"to": [db], "ports": [9000]}]),
        egress_policy("shop/no-db", "web", [{"to": [db]}], action="DENY"),
        egress_policy("shop/try-lockdown", "web", [{"to": [api]}], "DENY", "dry-run"),
        egress_policy("ops/job-egress", "job", [{"to": [{"workloads": shop_api}]}]),
    ]


class EgressMesh:
    def __init__(self, root: Path, net: str) -> None:
        self.net = net
        self.local = {k: free_port() for k in ("web_api", "web_db", "job_api", "job_db")}
        self.app_port = free_port()
        self.policies = root / "policies"
        self.policies.mkdir()
        write(self.policies / "mesh.yaml", egress_mesh(net, self.local, self.app_port))
        self.up = MeshwardenUp(self.policies, root / "data")

    @property
    def server(self) -> str:
        return self.up.ready_line.split("health ")[1].split(",")[0]

    def meshwarden(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshwarden", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def flows_json(self, *args: str) -> list[dict[str, Any]]:
        result = self.meshwarden("flows", "--server", self.server, *args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def wait_for_egress(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """The egress records once there are `count` (sidecars flush every 0.25 s)."""
        deadline = time.monotonic() + timeout
        flows = self.flows_json("--direction", "egress")
        while len(flows) < count and time.monotonic() < deadline:
            time.sleep(0.2)
            flows = self.flows_json("--direction", "egress")
        return flows

    def explain_egress(self, source: str, destination: str, number: int) -> dict[str, Any]:
        """`explain --from-workload` for the path: its egress decision (JSON)."""
        result = self.meshwarden(
            "explain",
            str(self.policies),
            "--from-workload",
            source,
            "--to",
            destination,
            "--port",
            str(number),
            "-o",
            "json",
        )
        assert result.returncode in (0, 1), result.stderr
        return dict(json.loads(result.stdout)["egress"])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EgressMesh]:
    # A network of its own: no other test of this run or of a run beside it listens there.
    egress_mesh = EgressMesh(tmp_path_factory.mktemp("egress-flows"), claim_net())
    with sample_app(egress_mesh.app_port):
        egress_mesh.up.start()
        try:
            yield egress_mesh
        finally:
            assert egress_mesh.up.stop() == 0, egress_mesh.up.log.read_text()[-3000:]


def _tcp(local_port: int) -> bytes:
    """What a connection through an outbound listener gets back for an HTTP request."""
    with socket.create_connection(("127.0.0.1", local_port), timeout=10) as conn:
        conn.sendall(b"GET /raw HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        try:
            return conn.recv(64)
        except ConnectionError:
            return b""


def _record(flow: dict[str, Any]) -> tuple[Any, ...]:
    dry = flow["dryRun"]
    return (
        flow["sourceWorkload"],
        flow["source"],
        flow["workload"],
        flow["port"],
        flow["decision"],
        flow["policy"],
        flow["rule"],
        (dry["decision"], dry["policy"]) if dry else None,
    )


@pytest.fixture(scope="module")
def egress_records(mesh: EgressMesh) -> list[dict[str, Any]]:
    """One connection through each upstream: what it got, then the four egress records."""
    assert request("127.0.0.1", mesh.local["web_api"], "GET", "/api") == 200
    assert _tcp(mesh.local["web_db"]) == b""  # egress closes it
    assert request("127.0.0.1", mesh.local["job_api"], "GET", "/api") == 200
    assert _tcp(mesh.local["job_db"]).startswith(b"HTTP/1.")  # monitor mode: it passes
    return mesh.wait_for_egress(4)


def test_egress_decisions_are_in_the_flow_log_with_their_causes(
    egress_records: list[dict[str, Any]],
) -> None:
    assert sorted(_record(f) for f in egress_records) == sorted(
        [
            (
                "shop/web-1",
                WEB,
                "shop/api-1",
                8080,
                "allow",
                "shop/web-egress",
                0,
                ("deny", "shop/try-lockdown"),
            ),
            (
                "shop/web-1",
                WEB,
                "shop/db",
                9000,
                "deny",
                "shop/no-db",
                0,
                ("allow", "default:allow"),
            ),
            (
                "ops/job-1",
                JOB,
                "shop/api-1",
                8080,
                "allow",
                "default:allow",
                None,
                ("allow", "ops/job-egress"),
            ),
            (
                "ops/job-1",
                JOB,
                "shop/db-1",
                9000,
                "allow",
                "default:allow",
                None,
                ("deny", "default:deny"),
            ),
        ]
    )
    assert all(f["direction"] == "egress" and f["protocol"] == "tcp" for f in egress_records)


def test_the_flow_log_names_the_cause_explain_names_for_each_path(
    mesh: EgressMesh, egress_records: list[dict[str, Any]]
) -> None:
    """Differential: the cause each sidecar reported equals `explain`'s egress cause for the same
    (source, destination, port); a closed upstream's equals that of its serving workload."""
    serving = {"shop/api": "shop/api-1", "shop/db": "shop/db-1"}
    for flow in egress_records:
        destination = serving.get(flow["workload"], flow["workload"])
        explained = mesh.explain_egress(flow["sourceWorkload"], destination, flow["port"])
        reported = (flow["decision"].upper(), flow["policy"], flow["rule"])
        assert reported == (explained["decision"], explained["policy"], explained["rule"]), flow


def test_flows_filter_egress_by_direction_and_by_the_source_workload(
    mesh: EgressMesh, egress_records: list[dict[str, Any]]
) -> None:
    denied = mesh.flows_json("--direction", "egress", "--denied")
    assert [(f["workload"], f["policy"]) for f in denied] == [("shop/db", "shop/no-db")]
    assert denied[0]["destinationIdentity"] is None and denied[0]["service"] == "shop/db"
    from_job = mesh.flows_json("--direction", "egress", "--workload", "ops/job-1")
    assert sorted(f["workload"] for f in from_job) == ["shop/api-1", "shop/db-1"]
    reached = [f for f in from_job if f["workload"] == "shop/db-1"]
    assert reached[0]["destinationIdentity"] == f"spiffe://{TD}/ns/shop/sa/db-1"
    assert reached[0]["destinationAddress"] == f"{mesh.net}.4:9000"
    ingress = mesh.flows_json("--direction", "ingress")
    assert ingress and all(f["direction"] == "ingress" for f in ingress)
    table = mesh.meshwarden("flows", "--server", mesh.server, "--direction", "egress", "--denied")
    assert table.returncode == 0, table.stderr
    (row,) = table.stdout.splitlines()[1:]
    for cell in (WEB, "shop/db:9000", "egress tcp", "deny", "shop/no-db#0", "allow default:allow"):
        assert cell in row


def test_the_source_sidecar_counts_what_dry_run_egress_would_do(
    mesh: EgressMesh, egress_records: list[dict[str, Any]]
) -> None:
    """Monitor mode: job-1's connection to the db passed; its sidecar's RBAC shadow rules
    counted it as one dry-run egress would deny."""
    admin = mesh.up.data_dir / "sidecars" / "ops_job-1.admin.sock"
    status, stats = admin_request(admin, "/stats?filter=dryrun")
    assert status == 200
    counters = dict(line.split(": ") for line in stats.splitlines())
    shadow = "meshwarden_egress_.rbac.meshwarden_egress_dryrun_.shadow_"
    assert (counters[shadow + "denied"], counters[shadow + "allowed"]) == ("1", "1"), stats
