"""Network namespaces for packet-filter tests: a host, a client with several source addresses on
one veth link, and (for Docker) a bridge with a container behind a published port.

Every name starts with `mwr` and a per-lab tag; `Lab.close` kills the servers and deletes the
namespaces (which removes their links). Needs root, `ip`, `nft` and `iptables` (`make test`
installs the last two when missing).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
PROBE = str(Path(__file__).with_name("_probe.py"))
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter lives under /root (0700)
HOST_IP = "10.77.0.1"
CLIENT_IPS = ("10.77.1.2", "10.77.1.200", "10.77.2.2")
CONTAINER_IP = "10.88.0.2"
HOST6_IP = "fd77::1"
CLIENT6_IPS = ("fd77::1:2", "fd77::2:2")
_counter = itertools.count()
CLONE_NEWNET = 0x40000000


def require_tools() -> None:
    missing = [t for t in ("ip", "nft", "iptables", "iptables-restore") if not shutil.which(t)]
    assert os.geteuid() == 0, "the packet-filter tests run as root (they create network namespaces)"
    assert not missing, (
        f"missing {missing}: `make test` installs them (apt-get install nftables iptables)"
    )


class Lab:
    def __init__(self, prefix: str = "mwr") -> None:
        require_tools()
        self.tag = f"{prefix}{os.getpid()}x{next(_counter)}"  # "x": pid 1234 #10 ≠ pid 12341 #0
        self.host = f"{self.tag}-host"
        self.client = f"{self.tag}-cli"
        self.container = f"{self.tag}-ctr"
        self.namespaces: list[str] = []
        self.servers: list[subprocess.Popen[str]] = []

    def sh(self, *command: str, ns: str | None = None, text: str | None = None) -> str:
        prefix = ["ip", "netns", "exec", ns] if ns else []
        done = subprocess.run(
            [*prefix, *command], input=text, capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, f"{' '.join(command)} failed: {done.stderr}"
        return done.stdout

    def _netns(self, name: str) -> None:
        self.sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.sh("ip", "link", "set", "lo", "up", ns=name)

    def start(self) -> Lab:
        self._netns(self.host)
        self._netns(self.client)
        self.sh(
            "ip",
            "link",
            "add",
            f"{self.tag}a",
            "netns",
            self.host,
            "type",
            "veth",
            "peer",
            "name",
            f"{self.tag}b",
            "netns",
            self.client,
        )
        self.sh("ip", "addr", "add", f"{HOST_IP}/16", "dev", f"{self.tag}a", ns=self.host)
        self.sh("ip", "link", "set", f"{self.tag}a", "up", ns=self.host)
        for address in CLIENT_IPS:
            self.sh("ip", "addr", "add", f"{address}/16", "dev", f"{self.tag}b", ns=self.client)
        self.sh("ip", "link", "set", f"{self.tag}b", "up", ns=self.client)
        return self

    def add_ipv6(self) -> None:
        """IPv6 on the host-client link (no duplicate address detection, so usable at once)."""
        self.sh(
            "ip",
            "-6",
            "addr",
            "add",
            f"{HOST6_IP}/64",
            "dev",
            f"{self.tag}a",
            "nodad",
            ns=self.host,
        )
        for address in CLIENT6_IPS:
            self.sh(
                "ip",
                "-6",
                "addr",
                "add",
                f"{address}/64",
                "dev",
                f"{self.tag}b",
                "nodad",
                ns=self.client,
            )

    def add_docker_bridge(self, bridge: str) -> None:
        """A container namespace behind a bridge on the host, its port 80 published on the host's
        port 80 by DNAT, and the FORWARD chain jumping to DOCKER-USER, as Docker sets them up."""
        self._netns(self.container)
        host, ctr = self.host, self.container
        self.sh("ip", "link", "add", bridge, "type", "bridge", ns=host)
        self.sh("ip", "addr", "add", "10.88.0.1/24", "dev", bridge, ns=host)
        self.sh("ip", "link", "set", bridge, "up", ns=host)
        self.sh(
            "ip",
            "link",
            "add",
            f"{self.tag}c",
            "netns",
            host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ctr,
        )
        self.sh("ip", "link", "set", f"{self.tag}c", "master", bridge, "up", ns=host)
        self.sh("ip", "addr", "add", f"{CONTAINER_IP}/24", "dev", "eth0", ns=ctr)
        self.sh("ip", "link", "set", "eth0", "up", ns=ctr)
        self.sh("ip", "route", "add", "default", "via", "10.88.0.1", ns=ctr)
        self.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=host)
        self.sh(
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            HOST_IP,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            f"{CONTAINER_IP}:80",
            ns=host,
        )
        self.sh("iptables", "-N", "DOCKER-USER", ns=host)
        self.sh("iptables", "-A", "FORWARD", "-j", "DOCKER-USER", ns=host)
        self.sh("iptables", "-A", "FORWARD", "-j", "ACCEPT", ns=host)

    def serve(self, ns: str, *specs: str) -> None:
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, PROBE, "serve", *specs],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.servers.append(server)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready", f"server in {ns} did not start"

    def probe(
        self, ns: str, targets: list[tuple[str, str, str, int]], uid: int | None = None
    ) -> list[str]:
        """Outcomes of `targets` probed from `ns`; with `uid`, from sockets of that uid (with
        CAP_NET_RAW for SCTP's raw sockets, and the system python, which any uid may run)."""
        command = [sys.executable, PROBE, "probe", json.dumps(targets)]
        if uid is not None:
            user = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            caps = ["--inh-caps=+net_raw", "--ambient-caps=+net_raw"]
            command = ["setpriv", *user, *caps, SYSTEM_PYTHON, *command[1:]]
        out = self.sh(*command, ns=ns)
        results: list[str] = json.loads(out)
        return results

    def close(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait(timeout=10)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@contextmanager
def lab(prefix: str = "mwr") -> Iterator[Lab]:
    made = Lab(prefix)
    try:
        yield made.start()
    finally:
        made.close()


def inside(ns: str, work: Callable[[], T]) -> T:
    """Run `work` in a thread that has entered network namespace `ns` (processes it starts are
    in `ns` too); the rest of the test process stays where it was."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{ns}") as handle:
            if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                failure.append(OSError(ctypes.get_errno(), f"setns {ns}"))
                return
        try:
            result.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=120)
    if failure:
        raise failure[0]
    return result[0]
