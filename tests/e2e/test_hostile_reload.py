"""Hostile and careless changes to the policy directory of a running `up` (real Envoy sidecars)
and a running `server`: nothing crashes them, /healthz says `degraded` with the error, and the
sidecars keep deciding as before — real requests, before and after."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .._loopback import claim_net, free_port
from ._live import MeshwardenUp, reading_where, request, sample_app, wait_for
from ._mesh import shop_pair, write

MESH = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata:
  name: mesh
spec:
  trustDomain: hostile.test
  mtls: STRICT
  defaultPolicy: deny
"""


ALLOW_API = """\
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-access, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  rules:
  - from: [{workloads: {matchLabels: {app: frontend}}}]
    to: [{paths: [/api/*]}]
"""
DENY_SECRET = """\
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-secrets, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules: [{to: [{paths: [/api/secret]}]}]
"""

# each one crashed the control plane (and so every sidecar under `up`) before
CRASH_TRIGGERS = {
    "deep.yaml": "a: " + "[" * 700 + "]" * 700 + "\n",
    "alias.yaml": "a: &x [*x]\n",
    "digits.yaml": "a: " + "9" * 5000 + "\n",
}


class HostileMesh:
    def __init__(self, root: Path, net: str) -> None:
        self.net = net
        self.policies = root / "policies"
        self.policies.mkdir()
        self.front_out, self.app_port = free_port(), free_port()
        self.write_all()
        self.up = MeshwardenUp(self.policies, root / "data")

    def write_all(self) -> None:
        (self.policies / "mesh.yaml").write_text(MESH)
        write(self.policies / "workloads.yaml", shop_pair(self.net, self.front_out, self.app_port))
        (self.policies / "policies.yaml").write_text(ALLOW_API + DENY_SECRET)

    def frontend(self, path: str) -> int | str:
        return request("127.0.0.1", self.front_out, "GET", path)

    def plaintext(self) -> int | str:
        return request(f"{self.net}.3", 8080, "GET", "/api/items", source=f"{self.net}.9")

    def decisions(self) -> dict[str, Any]:
        """What the sidecars answer: the allowed path, a denied one, default deny, plaintext."""
        plain = self.plaintext()
        return {
            "allowed": self.frontend("/api/items"),
            "denied": self.frontend("/api/secret"),
            "default": self.frontend("/other"),
            "plaintext": "refused" if isinstance(plain, str) else plain,
        }

    def alive(self) -> bool:
        return self.up.process is not None and self.up.process.poll() is None

    def wait_healthy(self) -> dict[str, Any]:
        report = reading_where(self.up.health, lambda h: h["status"] == "ok")
        assert report["status"] == "ok", report
        return report


EXPECTED = {"allowed": 200, "denied": 403, "default": 403, "plaintext": "refused"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileMesh]:
    live = HostileMesh(tmp_path_factory.mktemp("hostile"), claim_net())
    with sample_app(live.app_port):
        live.up.start()
        try:
            yield live
        finally:
            assert live.up.stop() == 0, live.up.log.read_text()[-3000:]


@pytest.mark.parametrize("name", sorted(CRASH_TRIGGERS))
def test_a_crash_trigger_leaves_up_serving_and_reports_it(mesh: HostileMesh, name: str) -> None:
    assert mesh.decisions() == EXPECTED
    version = mesh.up.health()["policyVersion"]
    trigger = mesh.policies / name
    trigger.write_text(CRASH_TRIGGERS[name])
    try:
        report = reading_where(
            mesh.up.health,
            lambda h: h["status"] == "degraded" and str(trigger) in "".join(h["errors"]),
        )
        assert report["status"] == "degraded"
        assert str(trigger) in "".join(report["errors"]) and report["policyVersion"] == version
        assert mesh.alive() and mesh.decisions() == EXPECTED
    finally:
        trigger.unlink()
    assert mesh.wait_healthy()["policyVersion"] == version


def test_directories_vanishing_mid_scan_never_stop_up(mesh: HostileMesh) -> None:
    churn = mesh.policies / "churn"
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for depth in range(3):
            nested = churn.joinpath(*[f"d{i}" for i in range(depth + 1)])
            nested.mkdir(parents=True, exist_ok=True)
            (nested / "x.yaml").write_text("# empty\n")
        shutil.rmtree(churn)
    assert mesh.alive()
    mesh.wait_healthy()
    assert mesh.decisions() == EXPECTED


def test_renaming_mesh_yaml_away_is_refused(mesh: HostileMesh) -> None:
    moved = mesh.policies / "mesh.yaml.bak"
    (mesh.policies / "mesh.yaml").rename(moved)
    try:
        removed = "the Mesh document default/mesh was removed"
        report = reading_where(
            mesh.up.health,
            lambda h: h["status"] == "degraded" and removed in "".join(h["errors"]),
        )
        assert report["status"] == "degraded"
        assert removed in "".join(report["errors"])
        time.sleep(1.5)  # long enough for a push, were it accepted
        assert mesh.decisions() == EXPECTED
    finally:
        moved.rename(mesh.policies / "mesh.yaml")
    mesh.wait_healthy()
    assert "policy change refused" in mesh.up.log.read_text()  # logged, not only in /healthz


class Watcher(threading.Thread):
    """Sends requests that must never be allowed until stopped; remembers every answer."""

    def __init__(self, mesh: HostileMesh) -> None:
        super().__init__(daemon=True)
        self.mesh, self.seen = mesh, []  # type: list[dict[str, Any]]
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and len(self.seen) < 2000:
            plain = self.mesh.plaintext()
            answers = {
                "secret": self.mesh.frontend("/api/secret"),
                "default": self.mesh.frontend("/other"),
            }
            answers["plaintext"] = "refused" if isinstance(plain, str) else plain
            self.seen.append(answers)

    def stop(self) -> list[dict[str, Any]]:
        self.done.set()
        self.join(30)
        return self.seen


def write_in_two_chunks(path: Path, text: str, cut: int, pause: float) -> None:
    with path.open("w") as handle:  # truncates in place, as editors and `cat >` do
        handle.write(text[:cut])
        handle.flush()
        os.fsync(handle.fileno())
        time.sleep(pause)
        handle.write(text[cut:])


def test_a_half_written_file_is_never_served(mesh: HostileMesh) -> None:
    mesh.wait_healthy()
    watcher = Watcher(mesh)
    watcher.start()
    try:
        time.sleep(0.5)
        policies = ALLOW_API + DENY_SECRET + "# rewritten\n"
        # cut before the DENY policy, with a pause shorter than a change takes to settle
        write_in_two_chunks(mesh.policies / "policies.yaml", policies, len(ALLOW_API), 0.1)
        # cut after the trust domain: mtls and defaultPolicy fall back to their defaults
        # (STRICT, allow); this pause is long enough to settle: the loosening is refused
        cut = MESH.index("  mtls:")
        write_in_two_chunks(mesh.policies / "mesh.yaml", MESH + "# rewritten\n", cut, 1.5)
        time.sleep(1.0)
    finally:
        seen = watcher.stop()
    assert len(seen) >= 3
    allowed = [answer for answer in seen if 200 in answer.values()]
    assert allowed == [], f"allowed while half-written: {allowed[:3]}"
    assert mesh.wait_healthy()["status"] == "ok"
    assert mesh.decisions() == EXPECTED


# --- `meshwarden server` on its own ----------------------------------------------------------


def health(url: str) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/healthz")
    return dict(json.loads(conn.getresponse().read()))


def test_every_crash_trigger_leaves_a_server_serving(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "mesh.yaml").write_text(MESH)
    write(policies / "workloads.yaml", shop_pair("127.0.0", free_port(), free_port()))
    command = [
        sys.executable,
        "-m",
        "meshwarden",
        "server",
        "--policies",
        str(policies),
        "--data-dir",
        str(tmp_path / "data"),
        "--listen",
        "127.0.0.1:0",
        "--xds-listen",
        "127.0.0.1:0",
    ]
    log = tmp_path / "server.log"
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    try:
        assert server.stdout is not None
        ready = server.stdout.readline()
        assert ready.startswith("ready"), log.read_text()[-2000:]
        url = ready.split("health ")[1].strip()
        version = health(url)["policyVersion"]
        for name, text in CRASH_TRIGGERS.items():
            (policies / name).write_text(text)

        def named(report: dict[str, Any]) -> bool:  # each trigger (and what else it finds)
            errors = report["errors"]
            return all(any(str(policies / n) in e for e in errors) for n in CRASH_TRIGGERS)

        report = reading_where(lambda: health(url), named)
        assert report["status"] == "degraded" and report["policyVersion"] == version
        for name in CRASH_TRIGGERS:
            assert any(str(policies / name) in e for e in report["errors"])
        for name in CRASH_TRIGGERS:
            (policies / name).unlink()
        assert wait_for(lambda: health(url)["status"], "ok") == "ok"
        assert server.poll() is None
    finally:
        server.terminate()
        assert server.wait(30) == 0, log.read_text()[-2000:]
