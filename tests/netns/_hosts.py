"""Three hosts as network namespaces on one switch (a bridge in a fourth namespace), for the
"Three hosts" walkthrough of docs/operations.md: host-a 10.10.0.1, host-b 10.10.0.2, host-c
10.10.0.3. Every name starts with `op` and a per-run tag; `close` kills every process started
and deletes the namespaces (which removes their links)."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

ADDRESSES = {"host-a": "10.10.0.1", "host-b": "10.10.0.2", "host-c": "10.10.0.3"}
_counter = itertools.count()


def meshwarden(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshwarden", *args]


class ThreeHosts:
    def __init__(self) -> None:
        assert os.geteuid() == 0, "the three-hosts walkthrough runs as root (network namespaces)"
        self.tag = f"op{os.getpid()}x{next(_counter)}"  # unique among live processes
        self.switch = f"{self.tag}-sw"
        self.ns = {host: f"{self.tag}-{host[-1]}" for host in ADDRESSES}
        # mode 0755: the sidecars' users must reach the agents' sockets inside
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.root.chmod(0o755)
        self.namespaces: list[str] = []
        self.processes: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def sh(self, *command: str, host: str | None = None) -> str:
        prefix = ["ip", "netns", "exec", self.ns.get(host, host)] if host else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)  # type: ignore[list-item]
        assert done.returncode == 0, f"{' '.join(command)} failed: {done.stderr}"
        return done.stdout

    def _netns(self, name: str) -> None:
        self.sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.sh("ip", "link", "set", "lo", "up", host=name)

    def start(self) -> ThreeHosts:
        self._netns(self.switch)
        self.sh("ip", "link", "add", "br0", "type", "bridge", host=self.switch)
        self.sh("ip", "link", "set", "br0", "up", host=self.switch)
        for host, address in ADDRESSES.items():
            ns, port = self.ns[host], f"{self.tag}{host[-1]}"
            self._netns(ns)
            self.sh(
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.switch,
            )
            self.sh("ip", "link", "set", port, "master", "br0", "up", host=self.switch)
            self.sh("ip", "addr", "add", f"{address}/24", "dev", "eth0", host=host)
            self.sh("ip", "link", "set", "eth0", "up", host=host)
        return self

    def path(self, *parts: str, mode: int = 0o700) -> Path:
        """A directory under the lab's root (created with `mode`)."""
        folder = self.root.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(mode)
        return folder

    def spawn(self, host: str, command: list[str], log: str) -> subprocess.Popen[bytes]:
        """Start `command` on `host`, stdout and stderr to root/LOG (read with `log`)."""
        out = (self.root / log).open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[host], *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append((process, out))
        return process

    def log(self, name: str) -> str:
        return (self.root / name).read_text(errors="replace")

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        for process, _out in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, out in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            out.close()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
