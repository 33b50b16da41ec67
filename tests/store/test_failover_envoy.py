"""Replicas with a real Envoy sidecar and agent on a three-member etcd: kill -9 the replica the
sidecar uses under steady traffic, then the etcd leader — no request fails and none fails open;
the sidecar and agent carry on with the other replica, and an apply and a rollback made through
the store reach the sidecar (checked with real requests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .._loopback import claim_net, free_port
from ..e2e._live import request, sample_app
from ..e2e._mesh import mesh_document, policy, port, workload, write
from ..integration.harness import wait_for
from .replicas import write_kek

MESHWARDEN = [sys.executable, "-m", "meshwarden"]
pytestmark = [pytest.mark.e2e]


def _documents(net: str, app_port: int, paths: list[str]) -> list[dict[str, Any]]:
    """backend-1 on `net`.3:8080 (its sidecar runs as this uid); the legacy peer `net`.9, which
    has no identity, may GET `paths` (PERMISSIVE mTLS: the IP rule decides for it)."""
    mesh = {"trustDomain": "example.org", "mtls": "PERMISSIVE", "defaultPolicy": "deny"}
    backend = {
        "addresses": [f"{net}.3"],
        "ports": [port(8080, app_port)],
        "selectors": [f"unix:uid:{os.getuid()}"],
    }
    rule = {"from": [{"ipBlocks": [f"{net}.9/32"]}], "to": [{"methods": ["GET"], "paths": paths}]}
    return [
        mesh_document(mesh),
        workload("shop/backend-1", "backend", backend),
        policy("shop/legacy", [rule], selector="backend"),
    ]


def _run(*args: str) -> str:
    result = subprocess.run([*MESHWARDEN, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class Processes:
    root: Path
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, name: str, *args: str, ready: bool = True) -> tuple[subprocess.Popen[str], str]:
        log = (self.root / f"{name}.log").open("w")
        process = subprocess.Popen(
            [*MESHWARDEN, *args], stdout=subprocess.PIPE, stderr=log, text=True
        )
        self.started.append(process)
        if not ready:
            return process, ""
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("ready"), (
            f"{name}: {line!r} {(self.root / f'{name}.log').read_text()}"
        )
        return process, line

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.stop()


def _health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return dict(json.loads(reply.read()))


def _connected(url: str) -> bool:
    try:
        sidecar = _health(url)["sidecars"].get("shop/backend-1")
    except OSError:
        return False
    return bool(sidecar and sidecar["streams"] and sidecar["applied"])


def _connected_replica(healths: list[str]) -> int:
    """The index of the replica the sidecar is connected to and synced with, once one is."""
    found: list[int] = []

    def connected() -> bool:
        found[:] = [n for n, h in enumerate(healths) if _connected(h)]
        return bool(found)

    wait_for(connected, timeout=60)
    return found[0]


class Traffic:
    """Requests from the legacy peer in a loop: GET /api/x must be 200, GET /admin/x 403."""

    def __init__(self, net: str) -> None:
        self.net = net
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        deadline = time.monotonic() + 120  # bounded
        while not self._stop.is_set() and time.monotonic() < deadline:
            for path, expected in (("/api/x", 200), ("/admin/x", 403)):
                got = request(f"{self.net}.3", 8080, "GET", path, source=f"{self.net}.9")
                self.sent += 1
                if got != expected:
                    self.failures.append(f"GET {path}: {got} (expected {expected})")
            time.sleep(0.01)

    def wait_sent(self, count: int) -> None:
        """Until `count` requests were answered (however long each takes on a loaded host)."""
        wait_for(lambda: self.sent >= count or not self._thread.is_alive(), timeout=120)
        assert self.sent >= count, f"the traffic stopped after {self.sent} requests"

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_killing_the_sidecars_replica_and_the_etcd_leader_fails_no_request(
    etcd3, tmp_path, processes
):
    net = claim_net()  # no other test of this run or of a run beside it listens there
    policies = tmp_path / "policies"
    policies.mkdir()
    app_port = free_port()
    write(policies / "mesh.yaml", _documents(net, app_port, ["/api/*"]))
    url = etcd3.url
    assert "applied revision 1" in _run("apply", str(policies), "--store", url)
    kek = write_kek(tmp_path)
    servers, healths = [], []
    for n in range(2):
        data = tmp_path / f"replica{n}"
        process, line = processes.start(
            f"replica{n}",
            "server",
            "--store",
            url,
            "--kek-file",
            str(kek),
            "--data-dir",
            str(data),
            "--listen",
            "127.0.0.1:0",
            "--xds-listen",
            "127.0.0.1:0",
            "--health",
            "127.0.0.1:0",
        )
        ads = line.split("ADS on ")[1].split(",")[0]
        servers.append((process, line.split(" on ")[1].split(",")[0], ads))
        healths.append(line.rsplit("health ", 1)[1].strip())
    replicas = ",".join(address for _, address, _ in servers)
    token = _run("token", "create", "--store", url, "--node", "host-a").strip()
    bundle = tmp_path / "bundle.pem"
    _run("ca", "bundle", "--store", url, "--output-file", str(bundle))
    sds = tmp_path / "sds.sock"
    agent, _ = processes.start(
        "agent",
        "agent",
        "--server",
        replicas,
        "--join-token",
        token,
        "--server-bundle",
        str(bundle),
        "--data-dir",
        str(tmp_path / "agent"),
        "--socket",
        str(tmp_path / "agent.sock"),
        "--sds-socket",
        str(sds),
    )
    with sample_app(app_port):
        processes.start(
            "sidecar",
            "sidecar",
            "--workload",
            "shop/backend-1",
            "--server",
            ",".join(ads for _, _, ads in servers),
            "--trust-domain",
            "example.org",
            "--sds-socket",
            str(sds),
            ready=False,
        )
        wait_for(
            lambda: request(f"{net}.3", 8080, "GET", "/api/x", source=f"{net}.9") == 200, timeout=60
        )
        used = _connected_replica(healths)  # one reading: which replica the sidecar uses

        other = 1 - used
        with Traffic(net) as traffic:
            traffic.wait_sent(10)  # requests before the kill ...
            servers[used][0].send_signal(signal.SIGKILL)
            wait_for(lambda: _connected(healths[other]), timeout=60)
            traffic.wait_sent(traffic.sent + 10)  # ... and after the sidecar moved over
        assert traffic.failures == [] and traffic.sent >= 20

        write(policies / "mesh.yaml", _documents(net, app_port, ["/api/*", "/admin/*"]))
        assert "applied revision 2" in _run("apply", str(policies), "--store", url)
        wait_for(
            lambda: request(f"{net}.3", 8080, "GET", "/admin/x", source=f"{net}.9") == 200,
            timeout=60,
        )

        with Traffic(net) as traffic:  # /admin is allowed now: only /api is checked here
            etcd3.leader().kill()
            rolled = _run("rollback", "1", "--store", url, "--store-timeout", "20")
            assert "now revision 3" in rolled
            wait_for(
                lambda: request(f"{net}.3", 8080, "GET", "/admin/x", source=f"{net}.9") == 403,
                timeout=60,
            )
        assert [f for f in traffic.failures if f.startswith("GET /api/")] == []
        assert _health(healths[other])["store"]["revision"] == 3
        assert agent.poll() is None, "the agent carried on with the other replica"
