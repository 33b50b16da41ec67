"""The seed's host-level walkthroughs as docs/hosts.md tells a user to run them: the commands in
examples/seed/host.yaml (`meshwarden render ... examples/seed --node ...`, run as a process on
the file in the repository), their output loaded into real nftables and iptables in network
namespaces that carry the example's own addresses, and real connections tried against it.

- web-1, the seed's security group: SSH only from the operations range 198.51.100.0/24, the
  web port 443 from anywhere, every other port of the Host's address closed.
- docker-1, the seed's two DOCKER-USER rules (`-s 192.168.1.0/24 -p tcp --dport 80 -j ACCEPT`,
  `-p tcp --dport 80 -j DROP`) as a Host: the rendered chain admits to the published container
  port exactly the sources the seed's own two rules admit, loaded the same way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ._lab import CLIENT_IPS, CONTAINER_IP, Lab, lab

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS, INSIDE_DOCKER_RANGE = "198.51.100.7", "192.168.1.2"  # within the seed's ranges
ELSEWHERE = CLIENT_IPS[2]  # 10.77.2.2: in neither range
WEB, DOCKER = "203.0.113.10", "192.0.2.20"  # the Hosts' addresses in examples/seed/host.yaml
SEED_DOCKER_USER = [  # the seed's rules, verbatim
    "iptables -A DOCKER-USER -s 192.168.1.0/24 -p tcp --dport 80 -j ACCEPT",
    "iptables -A DOCKER-USER -p tcp --dport 80 -j DROP",
]


def _render(*argv: str) -> str:
    """`meshwarden render ARGV` as the documentation shows it, from the repository's root."""
    done = subprocess.run(
        [sys.executable, "-m", "meshwarden", "render", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def _example_addresses(net: Lab, host_address: str) -> None:
    """The Host's address on the host's end of the link, the seed's client addresses on the
    client's end, and routes between them (every address of the link stays reachable)."""
    host_link, client_link = f"{net.tag}a", f"{net.tag}b"
    net.sh("ip", "addr", "add", f"{host_address}/32", "dev", host_link, ns=net.host)
    for address in (OPERATIONS, INSIDE_DOCKER_RANGE):
        net.sh("ip", "addr", "add", f"{address}/32", "dev", client_link, ns=net.client)
        net.sh("ip", "route", "add", f"{address}/32", "dev", host_link, ns=net.host)
    net.sh("ip", "route", "add", f"{host_address}/32", "dev", client_link, ns=net.client)


def test_the_seeds_web_host_rendered_by_the_documented_command_admits_what_the_seed_says() -> None:
    rendered = _render("nftables", "examples/seed", "--node", "web-1")
    with lab("h17") as net:
        _example_addresses(net, WEB)
        net.serve(net.host, "tcp:22", "tcp:443", "tcp:8081")
        targets = [
            ("tcp", OPERATIONS, WEB, 22),
            ("tcp", ELSEWHERE, WEB, 22),
            ("tcp", OPERATIONS, WEB, 443),
            ("tcp", ELSEWHERE, WEB, 443),
            ("tcp", OPERATIONS, WEB, 8081),
        ]
        assert net.probe(net.client, targets) == ["open"] * 5  # nothing loaded yet
        net.sh("nft", "-f", "-", ns=net.host, text=rendered)
        assert net.probe(net.client, targets) == ["open", "silent", "open", "open", "silent"]


def _docker_host(net: Lab) -> None:
    """Docker's set-up on the host (a bridge named docker0, the container's port 80 published
    on the Host's address), with the example's addresses."""
    _example_addresses(net, DOCKER)
    net.add_docker_bridge("docker0")  # the bridge `render iptables` names by default
    dnat = ["-d", DOCKER, "-p", "tcp", "--dport", "80", "-j", "DNAT"]
    net.sh(
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        *dnat,
        "--to",
        f"{CONTAINER_IP}:80",
        ns=net.host,
    )
    net.serve(net.container, "tcp:80")


def test_the_seeds_docker_user_rules_and_the_rendered_docker_host_admit_the_same_sources() -> None:
    rendered = _render("iptables", "examples/seed", "--node", "docker-1", "--chain", "DOCKER-USER")
    targets = [("tcp", INSIDE_DOCKER_RANGE, DOCKER, 80), ("tcp", ELSEWHERE, DOCKER, 80)]
    outcomes = {}
    for name in ("seed", "rendered"):
        with lab("h17") as net:
            _docker_host(net)
            assert net.probe(net.client, targets) == ["open", "open"]  # Docker alone: open
            if name == "seed":
                for rule in SEED_DOCKER_USER:
                    net.sh(*rule.split(), ns=net.host)
            else:
                net.sh("iptables-restore", "--noflush", ns=net.host, text=rendered)
            outcomes[name] = net.probe(net.client, targets)
    assert outcomes == {"seed": ["open", "silent"], "rendered": ["open", "silent"]}
