"""The rollout path on a live mesh (`meshwarden up`, real Envoy sidecars), as a user walks it:
monitor mode records traffic from a small load script into --flow-log-file, `recommend` turns
it into policies that allow every observed flow and nothing else, `promote` enforces them,
monitor mode is switched off, and `verify` finds the live mesh agreeing with explain and with
an expectation matrix — until a policy is broken, which `verify` reports by pair."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshwarden.engine import load

from .._loopback import claim_net, free_port
from ._live import MeshwardenUp, appended_lines, request, sample_app, wait_for
from ._mesh import Document, app, mesh_document, policy, port, service, upstream, workload, write


def rollout_mesh(monitor: bool = True) -> list[Document]:
    spec = {"trustDomain": "rollout.test", "defaultPolicy": "deny"}
    return [mesh_document(spec | ({"defaultMode": "dry-run"} if monitor else {}))]


def rollout_workloads(p: dict[str, Any]) -> list[Document]:
    """frontend-1 → backend-1 (HTTP 8080) → db-1 (tcp 5432), and ops-1 → backend-1. Written
    before the rollout: only the catalogue for frontends (monitor mode makes it dry-run)."""
    net = p["net"]
    backend = {
        "addresses": [f"{net}.3"],
        "ports": [port(8080, p["app"])],
        "upstreams": [upstream("shop/db", 5432, p["back"])],
    }
    catalogue = {
        "from": [{"workloads": app("frontend")}],
        "to": [{"methods": ["GET"], "paths": ["/api/catalogue"]}],
    }
    return [
        workload(
            "shop/frontend-1",
            "frontend",
            {"addresses": [f"{net}.2"], "upstreams": [upstream("shop/backend", 8080, p["front"])]},
        ),
        workload("shop/backend-1", "backend", backend),
        workload(
            "shop/db-1", "db", {"addresses": [f"{net}.4"], "ports": [port(5432, p["db"], "tcp")]}
        ),
        workload(
            "ops/ops-1",
            "ops",
            {"addresses": [f"{net}.5"], "upstreams": [upstream("shop/backend", 8080, p["ops"])]},
        ),
        service("shop/backend", "backend", [{"port": 8080, "protocol": "http"}]),
        service("shop/db", "db", [{"port": 5432, "protocol": "tcp"}]),
        policy("shop/backend-access", [catalogue], selector="backend"),
    ]


LOAD = "GET /api/catalogue", *(f"GET /api/items/{n}" for n in range(1, 6)), "POST /api/cart"
EXPECT = """\
expect:
- {from: shop/frontend-1, to: shop/backend, port: 8080, method: GET, path: /api/items/42,
   decision: ALLOW}
- {from: shop/frontend-1, to: shop/backend, port: 8080, method: DELETE, path: /api/cart,
   decision: DENY}
- {from: ops/ops-1, to: shop/backend, port: 8080, method: GET, path: /api/catalogue,
   decision: DENY}
- {from: shop/backend-1, to: shop/db, port: 5432, decision: ALLOW}
"""


class Rollout:
    def __init__(self, root: Path, net: str) -> None:
        self.ports = {
            "net": net,
            "front": free_port(),
            "back": free_port(),
            "ops": free_port(),
            "app": free_port(),
            "db": free_port(),
        }
        self.policies = root / "policies"
        self.policies.mkdir()
        write(self.policies / "mesh.yaml", rollout_mesh())
        write(self.policies / "workloads.yaml", rollout_workloads(self.ports))
        self.flow_file = root / "flows.ndjson"
        self.expect = root / "expect.yaml"
        self.expect.write_text(EXPECT)
        self.up = MeshwardenUp(
            self.policies, root / "data", ("--flow-log-file", str(self.flow_file))
        )

    @property
    def server(self) -> str:
        return self.up.ready_line.split("health ")[1].split(",")[0]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshwarden", *args], capture_output=True, text=True, timeout=120
        )

    def call(self, port_key: str, line: str) -> int | str:
        method, path = line.split(" ", 1)
        return request("127.0.0.1", self.ports[port_key], method, path)

    def db_connection_held(self) -> bool:
        """Through the backend's sidecar to the database: held open when allowed."""
        with socket.create_connection(("127.0.0.1", self.ports["back"]), timeout=10) as conn:
            conn.settimeout(1.5)
            try:
                return conn.recv(1) != b""
            except TimeoutError:
                return True
            except ConnectionError:
                return False

    def flow_records(self) -> list[dict[str, Any]]:
        """The ingress records of the flow file (the sources' egress records are beside them)."""
        records = [json.loads(line) for line in appended_lines(self.flow_file)]
        return [r for r in records if r["direction"] == "ingress"]

    def wait_applied(self) -> None:
        """Until the control plane serves what the files compile to and every sidecar has it."""
        result = load([str(self.policies)])
        assert result.compiled is not None, result.errors

        def state() -> bool:
            health = self.up.health()
            return health["policyVersion"] == result.compiled.version and all(
                s["applied"] for s in health["sidecars"].values()
            )

        assert wait_for(state, True), self.up.health()


LOAD_SCRIPT = """\
import http.client, socket, sys
front, back = int(sys.argv[1]), int(sys.argv[2])
for line in sys.argv[3:]:
    method, path = line.split(" ", 1)
    conn = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
    conn.request(method, path)
    print(line, conn.getresponse().status)
    conn.close()
with socket.create_connection(("127.0.0.1", back), timeout=10) as db:
    db.settimeout(1.0)
    try:
        db.recv(1)
    except TimeoutError:
        print("db connection held open")
"""


@pytest.fixture(scope="module")
def rollout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    # A network of its own: no other test of this run or of a run beside it listens there.
    mesh = Rollout(tmp_path_factory.mktemp("rollout"), claim_net())
    with sample_app(mesh.ports["app"]), sample_app(mesh.ports["db"]):
        mesh.up.start()
        try:
            yield mesh
        finally:
            assert mesh.up.stop() == 0, mesh.up.log.read_text()[-3000:]


def _record_traffic(mesh: Rollout, tmp: Path) -> list[dict[str, Any]]:
    script = tmp / "load.py"
    script.write_text(LOAD_SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), str(mesh.ports["front"]), str(mesh.ports["back"]), *LOAD],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(" 200\n") == len(LOAD), run.stdout  # monitor mode refuses nothing
    assert "db connection held open" in run.stdout
    records = wait_for(lambda: len(mesh.flow_records()), len(LOAD) + 1)
    assert records == len(LOAD) + 1, mesh.flow_records()
    return mesh.flow_records()


def test_observe_recommend_promote_enforce_and_verify(rollout: Rollout, tmp_path: Path) -> None:
    mesh = rollout
    flows = _record_traffic(mesh, tmp_path)
    would = {(f["method"], f["path"]): f["dryRun"] for f in flows if f["protocol"] == "http"}
    assert would[("GET", "/api/catalogue")] == {
        "decision": "allow",
        "policy": "shop/backend-access",
    }
    assert would[("GET", "/api/items/3")] == {"decision": "deny", "policy": "default:deny"}
    assert all(f["decision"] == "allow" for f in flows)

    proposed = mesh.policies / "recommended"
    made = mesh.cli(
        "recommend", str(mesh.policies), "--flows", str(mesh.flow_file), "-o", str(proposed)
    )
    assert made.returncode == 0, made.stderr
    assert mesh.cli("check", "--strict", str(mesh.policies)).returncode == 0
    promoted = mesh.cli(
        "promote",
        "shop/recommended-backend",
        "shop/recommended-db",
        str(mesh.policies),
        "--require-clean",
        "1h",
        "--flows",
        str(mesh.flow_file),
    )
    assert promoted.returncode == 0, promoted.stderr
    write(mesh.policies / "mesh.yaml", rollout_mesh(monitor=False))
    mesh.wait_applied()

    for line in LOAD:  # every observed flow is still allowed, now enforced
        assert mesh.call("front", line) == 200, line
    # held open once the backend's sidecar reaches the database (a denial closes it every time)
    assert wait_for(mesh.db_connection_held, True)
    assert mesh.call("front", "GET /api/items/77") == 200  # the generalised sibling prefix
    assert mesh.call("front", "DELETE /api/cart") == 403  # a method never observed
    assert mesh.call("ops", "GET /api/catalogue") == 403  # a caller never observed
    explain = ("explain", str(mesh.policies), "--to", "shop/backend-1", "--port", "8080")
    assert mesh.cli(*explain, "--from-workload", "ops/ops-1").returncode == 1
    assert (
        mesh.cli(
            *explain, "--from-workload", "shop/frontend-1", "--path", "/api/items/3"
        ).returncode
        == 0
    )

    clean = mesh.cli("verify", "--server", mesh.server)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "shop/frontend-1" in clean.stdout and "shop/backend:8080" in clean.stdout
    expected = mesh.cli("verify", "--server", mesh.server, "--expect", str(mesh.expect))
    assert expected.returncode == 0, expected.stdout + expected.stderr

    broken = proposed / "shop" / "recommended-backend.yaml"
    broken.write_text(broken.read_text().replace('"/api/items/*"', '"/api/item/*"'))
    mesh.wait_applied()
    report = mesh.cli("verify", "--server", mesh.server, "--expect", str(mesh.expect))
    assert report.returncode == 1, report.stdout + report.stderr
    assert (
        "DIFFERENCE shop/frontend-1 -> shop/backend:8080 GET /api/items/42: expected "
        "ALLOW, sidecars DENY (403"
    ) in report.stdout
    assert report.stdout.count("DIFFERENCE") == 1
