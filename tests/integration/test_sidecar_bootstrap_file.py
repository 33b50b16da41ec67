"""`meshwarden sidecar` hands Envoy its bootstrap and then becomes Envoy (exec): nothing may be
left on disk per start (a supervisor restarting sidecars would fill /tmp), and the bootstrap
must be the one Envoy runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_a_started_sidecar_leaves_no_bootstrap_file_behind(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    private = tmp_path / "admin"
    private.mkdir(mode=0o700)
    admin = private / "admin.sock"
    env = {**os.environ, "TMPDIR": str(scratch)}
    sidecar = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshwarden",
            "sidecar",
            "--workload",
            "shop/backend-1",
            "--server",
            "127.0.0.1:9",
            "--trust-domain",
            "example.org",
            "--sds-socket",
            str(tmp_path / "no-agent.sock"),
            "--admin-socket",
            str(admin),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not admin.exists() and sidecar.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert admin.exists(), sidecar.stderr.read().decode() if sidecar.poll() else "no admin"
        # the process is Envoy now, running the bootstrap it read from the inherited memory file
        command = Path(f"/proc/{sidecar.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-c" in command
        assert command[command.index(b"-c") + 1].startswith(b"/dev/fd/")
        assert list(scratch.iterdir()) == []
    finally:
        sidecar.send_signal(signal.SIGTERM)
        try:
            sidecar.wait(timeout=20)
        except subprocess.TimeoutExpired:
            sidecar.kill()
            sidecar.wait()
