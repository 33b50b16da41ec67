"""`meshwarden status` against a real `meshwarden up` with real Envoy sidecars: a sidecar that
ACKed everything is SYNCED with its SVID's expiry, one whose listener Envoy rejects is NACK with
Envoy's own message, and the command exits 1 because of it. SIGTERM stops an `up` that still
waits for its sidecars to be ready."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .._loopback import free_port

MESH = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: status.test, mtls: STRICT, defaultPolicy: deny}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: t}
spec: {addresses: [ADDRESS], ports: [{port: 8080, targetPort: 18080, protocol: http}]}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: elsewhere-1, namespace: t}
spec: {addresses: [10.99.0.1], ports: [{port: 8080, protocol: http}]}
"""


def status(health: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "meshwarden", "status", "--server", health, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@dataclass
class Up:
    health: str
    process: subprocess.Popen[bytes]
    data: Path


@pytest.fixture
def up_with_a_nack(loopback: str) -> Iterator[Up]:
    """`up` serving web-1 (bindable) and elsewhere-1 (10.99.0.1 is on no interface, so Envoy
    NACKs its listener), still waiting for every sidecar to be ready."""
    folder = Path(tempfile.mkdtemp(prefix="mwst-"))  # short: unix socket paths live in it
    (folder / "policies").mkdir()
    (folder / "policies" / "mesh.yaml").write_text(MESH.replace("ADDRESS", loopback))
    health = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable,
        "-m",
        "meshwarden",
        "up",
        str(folder / "policies"),
        "--data-dir",
        str(folder / "data"),
        "--health",
        health,
        "--ready-timeout",
        "120s",
    ]
    up = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield Up(health, up, folder / "data")
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _healthz(health: str) -> dict[str, Any]:
    host, port = health.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/healthz")
        return dict(json.loads(conn.getresponse().read()))
    except OSError:
        return {}
    finally:
        conn.close()


def _settled(health: str) -> dict[str, Any]:
    """The JSON of `status` once web-1 is SYNCED and elsewhere-1 NACKed (bounded wait)."""
    wanted = {"t/web-1": "SYNCED", "t/elsewhere-1": "NACK"}
    seen: Any = None
    for _ in range(600):
        seen = _healthz(health).get("sidecars", {})
        if {ref: view["state"] for ref, view in seen.items()} == wanted:
            break
        time.sleep(0.1)
    done = status(health, "-o", "json")
    report = dict(json.loads(done.stdout))
    assert {row["workload"]: row["state"] for row in report["sidecars"]} == wanted, seen
    return report


def test_status_shows_synced_and_nacked_sidecars_with_envoys_message(up_with_a_nack: Up) -> None:
    report = _settled(up_with_a_nack.health)
    rows = {row["workload"]: row for row in report["sidecars"]}
    web, elsewhere = rows["t/web-1"], rows["t/elsewhere-1"]
    assert elsewhere["reason"].startswith("Listener version ")
    assert "10.99.0.1:8080" in elsewhere["reason"]  # Envoy's own words about the bind
    nack = elsewhere["types"]["Listener"]["nack"]
    assert "10.99.0.1:8080" in nack["error"]
    assert web["types"]["Listener"]["acked"] == web["types"]["Listener"]["current"]
    expiry = dt.datetime.fromisoformat(web["svidExpiry"])
    now = dt.datetime.now(dt.UTC)
    assert now < expiry <= now + dt.timedelta(hours=1, minutes=1)  # the default 1h SVID
    assert web["svid"]["spiffeId"] == "spiffe://status.test/ns/t/sa/web-1"
    assert web["svid"]["presentedExpiry"] and web["svid"]["issuedExpiry"]
    assert web["replica"] == report["servers"][0]["replica"] != ""
    assert report["counts"] == {"SYNCED": 1, "STALE": 0, "NACK": 1, "PROBLEM": 0}

    text = status(up_with_a_nack.health)
    assert text.returncode == 1  # a NACK stands
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["WORKLOAD", "STATE", "REPLICA", "SVID", "EXPIRES", "MESSAGE"]
    nacked = next(line for line in lines if line.startswith("t/elsewhere-1"))
    assert " NACK " in nacked and "10.99.0.1:8080" in nacked
    synced = next(line for line in lines if line.startswith("t/web-1"))
    assert " SYNCED " in synced and "(in " in synced
    assert lines[-1] == "1 SYNCED, 0 STALE, 1 NACK, 0 PROBLEM"

    only_web = status(up_with_a_nack.health, "--workload", "t/web-1")
    assert only_web.returncode == 0, only_web.stderr

    # `up` is still waiting for elsewhere-1 to be ready: SIGTERM stops it all the same
    up_with_a_nack.process.send_signal(signal.SIGTERM)
    assert up_with_a_nack.process.wait(timeout=20) == 0
    assert not list((up_with_a_nack.data / "sidecars").glob("*.pid.json"))  # Envoys stopped


def test_status_exits_1_naming_a_server_that_does_not_answer() -> None:
    done = status(f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "meshwarden status: error: 127.0.0.1:" in done.stderr
    assert "refused" in done.stderr.lower()
