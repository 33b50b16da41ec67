"""`meshwarden server --ext-authz-workers 1` with a real Envoy 1.40 sidecar whose HTTP ext_authz
filter asks the control plane's front over mTLS (the sidecar's SVID from the server's CA): the
worker process decides; a policy change reaches it and denies end to end; a worker killed with
SIGKILL is replaced, and nothing is allowed while no worker answers; the worker dies with a control
plane killed with SIGKILL."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from meshwarden.engine import TrustDomain
from meshwarden.identities import CaConfig, SystemClock, load_ca
from meshwarden.xds import CLUSTER, LISTENER, StaticTls, TranslationContext, workload_resources
from meshwarden.xds._envoy import static_cluster, upstream_tls

from meshwarden.demo import OtlpReceiver, otlp_receiver

from ._static_envoy import compile_docs, http_ext_authz_documents, write_svid
from .conftest import RunningEnvoy

TD = "example.org"
WORKLOAD = "a/w"
CALLER = f"spiffe://{TD}/ns/b/sa/caller"
OTHER = f"spiffe://{TD}/ns/b/sa/other"
SIDECAR_ID = f"spiffe://{TD}/ns/a/sa/w"
T = TypeVar("T")


def _documents(address: str, app_port: int, allowed: str) -> list[dict[str, Any]]:
    return http_ext_authz_documents(TD, address, app_port, allowed)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def app() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@dataclass
class Plane:
    process: subprocess.Popen[str]
    policies: Path
    data: Path
    front_port: int
    health_port: int

    def health(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.health_port, timeout=10)
        conn.request("GET", "/healthz")
        return dict(json.loads(conn.getresponse().read()))

    def workers(self) -> list[dict[str, Any]]:
        return list(self.health()["extAuthz"]["workers"])

    def svid(self, spiffe_id: str) -> tuple[str, str]:
        ca = load_ca(self.data / "ca.json", CaConfig(TrustDomain(TD)), SystemClock())
        folder = self.data.parent / "svids"
        folder.mkdir(exist_ok=True)
        return write_svid(ca, spiffe_id, folder)


def _wait(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """Poll `check()` until it is truthy; that one reading (never read again: the state may have
    moved on since)."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.1)
    return got


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@contextlib.contextmanager
def _running(tmp_path: Path, documents: list[dict[str, Any]], otlp: str) -> Iterator[Plane]:
    """`meshwarden server --ext-authz-workers 1` on `documents`, until the block ends."""
    policies, data = tmp_path / "policies", tmp_path / "data"
    policies.mkdir()
    data.mkdir(mode=0o700)
    (policies / "mesh.yaml").write_text(yaml.safe_dump_all(documents))
    command = [sys.executable, "-m", "meshwarden", "server", str(policies), "--data-dir"]
    command += [str(data), "--listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0"]
    command += ["--ext-authz-listen", "127.0.0.1:0", "--ext-authz-workers", "1"]
    command += ["--otlp-endpoint", otlp]
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    assert process.stdout is not None
    try:  # stopped below even when it never gets ready
        ready = process.stdout.readline()
        assert ready.startswith("ready"), (tmp_path / "server.log").read_text()[-3000:]
        front = int(ready.split("ext_authz on ")[1].split(" ")[0].rsplit(":", 1)[1])
        health = int(ready.split("/healthz")[0].rsplit(":", 1)[1])
        yield Plane(process, policies, data, front, health)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture
def plane(tmp_path: Path, loopback: str, app: int, collector: OtlpReceiver) -> Iterator[Plane]:
    with _running(tmp_path, _documents(loopback, app, CALLER), collector.endpoint) as running:
        yield running


def _sidecar(
    envoy: Callable[[dict[str, Any]], RunningEnvoy], plane: Plane, loopback: str, app: int
) -> None:
    """a/w's sidecar, its HTTP ext_authz cluster to the control plane's front over mTLS."""
    chain, key = plane.svid(SIDECAR_ID)
    bundle = plane.data / "bundle.pem"
    bundle.write_bytes(
        load_ca(plane.data / "ca.json", CaConfig(TrustDomain(TD)), SystemClock())
        .bundle()
        .x509_pem()
    )
    tls = StaticTls(chain, key, str(bundle), TD)
    ctx = TranslationContext(static_tls=tls, inline_routes=True, ext_authz_http_cluster="front")
    resources = workload_resources(compile_docs(_documents(loopback, app, CALLER)), WORKLOAD, ctx)
    front = static_cluster("front", "127.0.0.1", plane.front_port)
    certificate = {"certificateChain": {"filename": chain}, "privateKey": {"filename": key}}
    front["transportSocket"] = upstream_tls(
        commonTlsContext={
            "tlsCertificates": [certificate],
            "validationContext": {"trustedCa": {"filename": str(bundle)}},
        }
    )
    clusters = [*resources[CLUSTER], front]
    envoy({"staticResources": {"listeners": resources[LISTENER], "clusters": clusters}})


def _status(address: str, cert: tuple[str, str]) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection(address, 8080, context=context, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _current_health(plane: Plane) -> dict[str, Any] | None:
    """One /healthz report, if exactly one worker runs in it and serves the current policies.

    Callers use this one reading: between two reads a killed worker may be gone and its
    replacement not yet started, so the list may be empty."""
    health = plane.health()
    workers = health["extAuthz"]["workers"]
    return health if len(workers) == 1 and workers[0]["current"] else None


def _current_worker(plane: Plane) -> dict[str, Any] | None:
    """The one worker, if exactly one runs and it serves the current policies (one read)."""
    health = _current_health(plane)
    return health["extAuthz"]["workers"][0] if health else None


def _current(plane: Plane) -> bool:
    return _current_worker(plane) is not None


def _decision_spans(collector: OtlpReceiver) -> list[tuple[str, str]]:
    return [
        (s.attributes["meshwarden.authz.decision"], s.attributes["meshwarden.source.spiffe_id"])
        for s in list(collector.spans)
        if s.name == "meshwarden.authz.check"
    ]


def test_a_worker_decides_follows_a_policy_change_and_is_replaced_failing_closed(
    envoy: Callable[[dict[str, Any]], RunningEnvoy],
    plane: Plane,
    loopback: str,
    app: int,
    collector: OtlpReceiver,
) -> None:
    _sidecar(envoy, plane, loopback, app)
    caller, other = plane.svid(CALLER), plane.svid(OTHER)
    health = _wait(lambda: _current_health(plane), "the worker decides with the policies")
    [worker] = health["extAuthz"]["workers"]
    assert worker["version"] == health["policyVersion"] and worker["pid"] != os.getpid()
    assert _status(loopback, caller) == (200, b"hello")
    assert _status(loopback, other)[0] == 403
    spans = [("allow", CALLER), ("deny", OTHER)]  # exported by the worker that decided
    _wait(lambda: _decision_spans(collector) == spans, "the worker's decision spans")

    before, before_pid = worker["version"], worker["pid"]
    (plane.policies / "mesh.yaml").write_text(yaml.safe_dump_all(_documents(loopback, app, OTHER)))

    def _changed() -> dict[str, Any] | None:
        health = _current_health(plane)
        current = health["extAuthz"]["workers"][0] if health else None
        return health if current and current["version"] not in (None, before) else None

    # a new worker compiled it (at nice 19: a busy host may starve it for a minute), took over
    health = _wait(_changed, "the change reached it", timeout=180)
    [worker], restarts = health["extAuthz"]["workers"], health["extAuthz"]["restarts"]
    _wait(lambda: not _alive(before_pid), "the worker of the previous version exited")
    assert _status(loopback, caller)[0] == 403  # denied after the change, end to end
    assert _status(loopback, other) == (200, b"hello")

    os.kill(worker["pid"], signal.SIGSTOP)  # alive, so not replaced, and answering nothing
    assert _status(loopback, other)[0] == 403  # no worker answers: the sidecar fails closed
    os.kill(worker["pid"], signal.SIGKILL)
    killed = worker["pid"]

    def replaced() -> bool:  # nothing serves beside its replacement: it prepares at nice 0
        return (_current_worker(plane) or {"pid": killed})["pid"] != killed

    _wait(replaced, "replaced", timeout=180)
    assert plane.health()["extAuthz"]["restarts"] == restarts + 1  # the kill, counted once
    assert _status(loopback, other) == (200, b"hello")
    assert _status(loopback, caller)[0] == 403


def test_workers_exit_when_the_control_plane_is_killed(plane: Plane) -> None:
    worker = _wait(lambda: _current_worker(plane), "the worker listens")
    plane.process.kill()
    plane.process.wait(30)
    _wait(lambda: not _alive(worker["pid"]), "the worker exited")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
