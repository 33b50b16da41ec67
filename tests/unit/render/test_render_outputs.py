"""Rendered outputs: the seed's rules come out as the seed wrote them, the cloud JSON is what the
providers' APIs accept, and the same input always gives the same bytes."""

from __future__ import annotations

import copy
import random
from pathlib import Path

from meshwarden.engine import CompiledMesh, check_documents, load, parse_text
from meshwarden.render import (
    IptablesOptions,
    node_filter,
    render_aws_security_group,
    render_gcp_firewall,
    render_iptables,
    render_nftables,
)

from ._ec2 import ec2_problems
from ._gcp_firewall_schema import firewall_problems

SEED = "examples/seed"


def seed() -> CompiledMesh:
    result = load([SEED])
    assert result.compiled is not None, result.errors
    return result.compiled


def test_seed_docker_host_renders_the_seeds_two_docker_user_rules() -> None:
    text = render_iptables(node_filter(seed(), "docker-1"), IptablesOptions("DOCKER-USER"))
    port_80 = [line for line in text.splitlines() if "--ctorigdstport 80 " in line]
    assert port_80 == [
        "-A DOCKER-USER -o docker0 -p tcp -m conntrack --ctorigdstport 80 --ctdir ORIGINAL "
        "-s 192.168.1.0/24 -j RETURN",
        "-A DOCKER-USER -o docker0 -p tcp -m conntrack --ctorigdstport 80 --ctdir ORIGINAL -j DROP",
    ]
    assert ":DOCKER-USER - [0:0]" in text and "FORWARD" not in text.replace("# ", "")


def test_seed_web_host_security_group_ssh_from_operations_web_from_anywhere() -> None:
    rendered = render_aws_security_group(node_filter(seed(), "web-1"))
    assert ec2_problems({"GroupId": "sg-0123456789abcdef0", **rendered}) == ""
    summary = [
        (
            p["IpProtocol"],
            p["FromPort"],
            p["ToPort"],
            [r["CidrIp"] for r in p.get("IpRanges", [])],
            [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])],
        )
        for p in rendered["IpPermissions"]
    ]
    assert summary == [
        ("tcp", 22, 22, ["198.51.100.0/24"], []),
        ("tcp", 443, 443, ["0.0.0.0/0"], ["::/0"]),
    ]


def test_the_ec2_validator_used_above_rejects_a_wrong_shape() -> None:
    rendered = render_aws_security_group(node_filter(seed(), "web-1"))
    broken = copy.deepcopy(rendered)
    broken["IpPermissions"][0]["FromPort"] = "22"
    broken["IpPermissions"][0]["CidrIp"] = "0.0.0.0/0"
    report = ec2_problems({"GroupId": "sg-0", **broken})
    assert "FromPort" in report and "CidrIp" in report


def test_seed_web_host_gcp_firewall_bodies_meet_the_documented_resource() -> None:
    bodies = render_gcp_firewall(node_filter(seed(), "web-1"))
    assert [firewall_problems(b) for b in bodies] == [[], [], []]
    opened = sorted((b["sourceRanges"], b["allowed"]) for b in bodies)
    assert opened == [
        (["0.0.0.0/0"], [{"IPProtocol": "tcp", "ports": ["443"]}]),
        (["198.51.100.0/24"], [{"IPProtocol": "tcp", "ports": ["22"]}]),
        (["::/0"], [{"IPProtocol": "tcp", "ports": ["443"]}]),
    ]
    assert {t for b in bodies for t in b["targetTags"]} == {"web-1"}
    assert firewall_problems({**bodies[0], "name": "Web_1", "sourceRanges": ["::/0", "1.2.3.0/24"]})


def test_same_documents_in_any_order_render_the_same_bytes() -> None:
    text = Path(f"{SEED}/host.yaml").read_text() + "---\n"
    documents, problems = parse_text(text + Path(f"{SEED}/policies.yaml").read_text())
    assert not problems
    outputs = set()
    for seed_value in range(5):
        shuffled = list(documents)
        random.Random(seed_value).shuffle(shuffled)
        mesh, _ = check_documents(shuffled)
        assert mesh is not None
        nf = node_filter(mesh, "web-1")
        outputs.add(
            (
                render_nftables(nf),
                render_iptables(nf),
                repr(render_gcp_firewall(nf)),
                repr(render_aws_security_group(nf)),
            )
        )
    assert len(outputs) == 1
