"""`meshwarden agent --enforce nftables` as a user runs it: server and agent in a network
namespace of the test's own; the agent loads its node's table (rendered by the server from the
policies; the agent has no policy files), inbound and outbound chains together, and follows a
policy change."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from ._lab import Lab, lab

MESHWARDEN = [sys.executable, "-m", "meshwarden"]
POLICIES = """
{apiVersion: meshwarden.io/v1alpha1, kind: Mesh, metadata: {name: m}, spec: {trustDomain: a.org}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: api, namespace: shop}
spec: {ports: [{port: 9443, targetPort: 19443}], selectors: ["node:node-a", "unix:uid:1500"]}
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-out, namespace: shop}
spec: {direction: egress, rules: [{to: [{ipBlocks: [10.77.2.0/24]}], ports: [443]}]}
---
apiVersion: meshwarden.io/v1alpha1
kind: Host
metadata: {name: node-a}
spec:
  ingress:
  - {ports: [22], from: [{ipBlocks: [10.77.1.0/24]}]}
  - {ports: [WEB]}
"""


def start(net: Lab, args: list[str], log: Path) -> tuple[subprocess.Popen[str], str]:
    command = ["ip", "netns", "exec", net.host, *MESHWARDEN, *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    net.servers.append(process)  # killed when the lab closes
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("ready"), f"{args[0]}: {line!r} {log.read_text()}"
    return process, line


def table(net: Lab) -> str:
    return net.sh("nft", "list", "table", "inet", "meshwarden", ns=net.host)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(net: Lab, port: int) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}/healthz"
    script = f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())"
    return dict(json.loads(net.sh(sys.executable, "-c", script, ns=net.host)))


def test_agent_enforces_its_nodes_table_and_follows_policy_changes(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "mesh.yaml").write_text(POLICIES.replace("WEB", "443"))
    server_dir = tmp_path / "server"
    health_port = free_port()
    with lab() as net:
        _, ready = start(
            net,
            [
                "server",
                "--policies",
                str(policies),
                "--data-dir",
                str(server_dir),
                "--listen",
                "127.0.0.1:0",
                "--xds-listen",
                "127.0.0.1:0",
            ],
            tmp_path / "s.log",
        )
        address = ready.split(" on ")[1].split(",")[0]
        token = net.sh(
            *MESHWARDEN, "token", "create", "--data-dir", str(server_dir), "--node", "node-a"
        ).strip()
        bundle = tmp_path / "bundle.pem"
        net.sh(
            *MESHWARDEN, "ca", "bundle", "--data-dir", str(server_dir), "--output-file", str(bundle)
        )
        start(
            net,
            [
                "agent",
                "--server",
                address,
                "--join-token",
                token,
                "--server-bundle",
                str(bundle),
                "--data-dir",
                str(tmp_path / "agent"),
                "--socket",
                str(tmp_path / "agent.sock"),
                "--sync-interval",
                "1s",
                "--enforce",
                "nftables",
                "--health",
                f"127.0.0.1:{health_port}",
            ],
            tmp_path / "a.log",
        )
        loaded = table(net)  # the first sync happens before `ready`
        assert "tcp . 443 : accept" in loaded and "tcp . 19443 : drop" in loaded
        # egress in the same table, so in the same transaction: uid 1500 to 10.77.2.0/24:443
        assert "hook output" in loaded and "1500 : jump egress_1" in loaded
        assert "10.77.2.0/24 . tcp . 443" in loaded
        report = healthz(net, health_port)
        assert report["status"] == "ok", report
        assert report["packetFilter"] == {
            "table": "inet meshwarden",
            "healthy": True,
            "loaded": True,
            "error": None,
            "failures": 0,
        }
        (policies / "mesh.yaml").write_text(POLICIES.replace("WEB", "8443"))
        deadline = time.monotonic() + 30
        while "tcp . 8443 : accept" not in loaded and time.monotonic() < deadline:
            time.sleep(0.2)
            loaded = table(net)
        assert "tcp . 8443 : accept" in loaded and "tcp . 443 :" not in loaded
