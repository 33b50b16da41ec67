"""Agents and sidecars find replicas by name and follow the name when it moves: the agent
resolves `--server NAME:PORT` again on every reconnect (all the addresses the name has), the
sidecar's Envoy re-resolves its ADS cluster's names by itself. The names come from a hosts file
bind-mounted over /etc/hosts in a mount namespace of the agent and sidecar only (the system's
own resolver reads it; nothing outside that namespace sees it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from meshwarden.identities._node_client import channel_target

from .._loopback import free_port
from ..e2e._mesh import mesh_document, port, workload, write
from ..integration.harness import wait_for
from .replicas import write_kek
from .test_failover_envoy import MESHWARDEN, Processes, _connected, _health, _run

IN_HOSTS_NAMESPACE = [  # argv prefix: run with $HOSTS as /etc/hosts, in a private mount namespace
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount --bind "$0" /etc/hosts && exec "$@"',
]


class HostsFile:
    """A resolver over an /etc/hosts-format file, read on every call (as glibc reads it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, host: str, port: int) -> list[tuple[int, str]]:
        found = []
        for line in self.path.read_text().splitlines():
            address, *names = line.split("#")[0].split() or [""]
            if host in names:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                found.append((family, address))
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return found


def test_a_name_becomes_every_address_it_resolves_to_and_a_new_resolution_is_followed(tmp_path):
    hosts = tmp_path / "hosts"
    resolve = HostsFile(hosts)
    hosts.write_text("127.0.0.2 cp.example\n127.0.0.3 cp.example other.example\n")
    assert channel_target("cp.example:8443", resolve) == "ipv4:127.0.0.2:8443,127.0.0.3:8443"
    hosts.write_text("127.0.0.4 cp.example\n")
    assert channel_target("cp.example:8443", resolve) == "ipv4:127.0.0.4:8443"
    both = "::1 cp.example\n127.0.0.4 cp.example\n"
    hosts.write_text(both)  # a name with both families: its IPv4 addresses
    assert channel_target("cp.example:8443", resolve) == "ipv4:127.0.0.4:8443"
    hosts.write_text("::1 cp.example\n")
    assert channel_target("cp.example:8443", resolve) == "ipv6:[::1]:8443"
    hosts.write_text("127.0.0.4 cp.example\n")  # a name that does not resolve is left out
    assert channel_target("gone.example:1,cp.example:2", resolve) == "ipv4:127.0.0.4:2"
    with pytest.raises(OSError, match="no address for the server"):
        channel_target("gone.example:1", resolve)


def _svids(agent_health: str) -> set[str]:
    try:
        return {s["spiffeId"] for s in _health(agent_health)["svids"]}
    except OSError:
        return set()


def _documents(workloads: list[str]) -> list[Any]:
    mesh = {"trustDomain": "example.org", "mtls": "STRICT", "defaultPolicy": "deny"}
    spec = {"ports": [port(8080, 18080)], "selectors": [f"unix:uid:{os.getuid()}"]}
    docs = [mesh_document(mesh)]
    for index, name in enumerate(workloads):
        docs.append(
            workload(f"shop/{name}", name, {**spec, "addresses": [f"127.0.0.{50 + index}"]})
        )
    return docs


def _spawn_in(hosts: Path, processes: Processes, name: str, *args: str) -> str:
    """Start `meshwarden ARGS` with `hosts` as its /etc/hosts; its `ready` line."""
    log = (processes.root / f"{name}.log").open("w")
    argv = [*IN_HOSTS_NAMESPACE, str(hosts), *MESHWARDEN, *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    processes.started.append(process)
    if name == "sidecar":
        return ""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("ready"), f"{name}: {(processes.root / f'{name}.log').read_text()}"
    return line


@pytest.mark.e2e
def test_agent_and_sidecar_follow_a_replica_name_that_moves_without_a_restart(etcd, tmp_path):
    processes = Processes(tmp_path)
    try:
        _follow_a_moving_name(etcd.url, tmp_path, processes)
    finally:
        processes.stop()


def _follow_a_moving_name(url: str, tmp_path: Path, processes: Processes) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    write(policies / "mesh.yaml", _documents(["backend-1"]))
    _run("apply", str(policies), "--store", url)
    kek, listen, xds = write_kek(tmp_path), free_port(), free_port()
    replicas, healths = [], []
    for n, address in enumerate(("127.0.0.1", "127.0.0.2")):  # one port, two addresses
        process, line = processes.start(
            f"replica{n}",
            *("server", "--store", url, "--kek-file", str(kek), "--data-dir"),
            *(str(tmp_path / f"r{n}"), "--listen", f"{address}:{listen}"),
            *("--xds-listen", f"{address}:{xds}"),
            *("--health", "127.0.0.1:0"),
        )
        replicas.append(process)
        healths.append(line.rsplit("health ", 1)[1].split(",")[0].strip())
    name = f"replicas.mw-{os.getpid()}.test"
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 {name}\n127.0.0.9 {name}\n")  # .9: nothing listens there
    token = _run("token", "create", "--store", url, "--node", "host-a").strip()
    bundle = tmp_path / "bundle.pem"
    _run("ca", "bundle", "--store", url, "--output-file", str(bundle))
    sds = tmp_path / "sds.sock"
    line = _spawn_in(
        hosts,
        processes,
        "agent",
        *("agent", "--server", f"{name}:{listen}", "--join-token", token),
        *("--server-bundle", str(bundle), "--data-dir", str(tmp_path / "agent")),
        *("--socket", str(tmp_path / "agent.sock"), "--sds-socket", str(sds)),
        *("--sync-interval", "1s", "--health", "127.0.0.1:0"),
    )
    agent_health = line.rsplit("health ", 1)[1].strip()
    backend = "spiffe://example.org/ns/shop/sa/backend-1"
    wait_for(lambda: backend in _svids(agent_health), timeout=30)
    _spawn_in(
        hosts,
        processes,
        "sidecar",
        *("sidecar", "--workload", "shop/backend-1", "--server", f"{name}:{xds}"),
        *("--trust-domain", "example.org", "--sds-socket", str(sds)),
    )
    wait_for(lambda: _connected(healths[0]), timeout=30)

    hosts.write_text(f"127.0.0.2 {name}\n")  # the name moves to the other replica
    replicas[0].send_signal(signal.SIGKILL)
    write(policies / "mesh.yaml", _documents(["backend-1", "backend-2"]))
    _run("apply", str(policies), "--store", url)
    wait_for(lambda: "spiffe://example.org/ns/shop/sa/backend-2" in _svids(agent_health), 30)
    wait_for(lambda: _connected(healths[1]), timeout=30)
    assert _health(agent_health)["syncFailuresInARow"] == 0
    assert all(p.poll() is None for p in processes.started[1:]), "no restart of anything"
