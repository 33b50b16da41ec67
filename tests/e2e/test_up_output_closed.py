"""`meshwarden up DIR | head -1`: once its output goes away, `up` stops everything it started —
its Envoy sidecars, which otherwise outlive it, included — and exits 141, as a command killed
by SIGPIPE. Whether the pipe's reader goes away after the `ready` line (when `up` has nothing
more to write for hours) or before it (writing `ready` fails). Closing its terminal (SIGHUP)
stops it as SIGTERM does (exit 0): the Envoys, in sessions of their own, get no SIGHUP."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .._loopback import free_port

API = "meshwarden.io/v1alpha1"


def _mesh(address: str, port: int) -> str:
    """One workload, t/web-1 on `address`:8080 → `port`, denied to all (JSON is YAML)."""
    mesh = {"trustDomain": "pipe.test", "mtls": "STRICT", "defaultPolicy": "deny"}
    workload = {"addresses": [address], "ports": [{"port": 8080, "targetPort": port}]}
    docs = [
        ("Mesh", {"name": "mesh"}, mesh),
        ("Workload", {"name": "web-1", "namespace": "t"}, workload),
    ]
    return "\n---\n".join(
        json.dumps({"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec})
        for kind, meta, spec in docs
    )


def _naming(data: Path, but: int = 0) -> dict[int, str]:
    """The processes (but `but`) whose command line names `data`: the Envoys `up` started."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == but:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if os.fsencode(data) in cmdline:
            found[int(entry)] = cmdline.decode(errors="replace")
    return found


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mwup-"))  # short: unix socket paths live in it
    try:
        yield path
    finally:
        for pid in _naming(path / "data"):  # whatever a failed run left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def _ready_line(up: subprocess.Popen[bytes]) -> bytes:
    assert up.stdout is not None
    ready, _, _ = select.select([up.stdout], [], [], 120)
    assert ready, "no ready line within 120 s"
    return up.stdout.readline()


@pytest.mark.parametrize("closed", ["after ready", "before ready", "terminal hangup"])
def test_up_stops_everything_it_started_when_its_output_goes_away(
    folder: Path, loopback: str, closed: str
) -> None:
    (folder / "policies").mkdir()
    (folder / "policies" / "mesh.yaml").write_text(_mesh(loopback, free_port()))
    data, log = folder / "data", folder / "up.log"
    command = [sys.executable, "-m", "meshwarden", "up", str(folder / "policies")]
    command += ["--data-dir", str(data), "--health", f"127.0.0.1:{free_port()}"]
    command += ["--ready-timeout", "120s"]
    with log.open("wb") as stderr:
        up = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
    assert up.stdout is not None
    try:
        if closed == "after ready":
            assert _ready_line(up).startswith(b"ready ")
            assert _naming(data, but=up.pid), "up started no Envoy"
            time.sleep(0.5)  # up has nothing more to write: it must notice the pipe itself
        if closed == "terminal hangup":
            assert _ready_line(up).startswith(b"ready ")
            assert _naming(data, but=up.pid), "up started no Envoy"
            up.send_signal(signal.SIGHUP)  # as closing its terminal does
            assert up.wait(timeout=120) == 0, log.read_text()
        else:
            up.stdout.close()  # as `head` exiting does
            assert up.wait(timeout=120) == 141, log.read_text()
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
    assert "Traceback" not in log.read_text(), log.read_text()
    assert _naming(data) == {}  # no process it started survives
