"""`import --runtime local`: where the imported workloads run on one host (loopback addresses,
targetPorts, upstreams to the Services), and nothing else changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshwarden.cli import main

SEED = Path(__file__).resolve().parents[2] / "e2e" / "seed" / "cluster.yaml"


def _import(tmp_path: Path, *flags: str, source: Path = SEED) -> Path:
    out = tmp_path / "out"
    assert main(["import", str(source), "-o", str(out), *flags]) == 0
    return out


def _documents(out: Path, kind: str) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(out.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind:
                found[f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"] = doc["spec"]
    return found


LOCAL = ("--runtime", "local", "--local-network", "127.9.0.0/24", "--local-first-port", "30000")


def test_each_workload_gets_a_loopback_address_app_ports_and_upstreams(tmp_path: Path) -> None:
    workloads = _documents(_import(tmp_path, *LOCAL), "Workload")
    assert {ref: w["addresses"] for ref, w in workloads.items()} == {
        "ops/tools-1": ["127.9.0.1"],
        "shop/backend-1": ["127.9.0.2"],
        "shop/frontend-1": ["127.9.0.3"],
        "shop/reports-1": ["127.9.0.4"],
    }
    backend = workloads["shop/backend-1"]
    assert [(p["port"], p["targetPort"]) for p in backend["ports"]] == [
        (8080, 30004),
        (9090, 30005),
    ]
    # every other Service's ports, by the pod port they target (80 -> named http -> 8080)
    assert [(u["service"], u["port"]) for u in workloads["shop/reports-1"]["upstreams"]] == [
        ("ops/tools", 8080),
        ("shop/backend", 8080),
        ("shop/backend", 9090),
        ("shop/frontend", 8080),
    ]
    assert "shop/backend" not in {u["service"] for u in backend["upstreams"]}  # not to itself
    used = [p["targetPort"] for w in workloads.values() for p in w.get("ports", [])]
    used += [u["localPort"] for w in workloads.values() for u in w.get("upstreams", [])]
    assert len(used) == len(set(used)) and min(used) == 30000


def test_services_route_to_the_container_ports_they_target(tmp_path: Path) -> None:
    services = _documents(_import(tmp_path, *LOCAL), "Service")
    assert [p["port"] for p in services["shop/frontend"]["ports"]] == [8080]
    assert [p["port"] for p in services["ops/tools"]["ports"]] == [8080]
    assert [p["port"] for p in services["shop/backend"]["ports"]] == [8080, 9090]


def test_the_local_runtime_changes_no_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = _import(tmp_path / "a")
    local = _import(tmp_path / "b", *LOCAL)
    answers = []
    for out in (plain, local):
        for port in ("8080", "9090"):
            capsys.readouterr()
            assert main(["matrix", str(out), "--port", port, "-o", "json"]) == 0
            answers.append(json.loads(capsys.readouterr().out)["allowed"])
    assert answers[:2] == answers[2:]
    assert ["shop/frontend-1", "shop/backend-1"] in answers[0]


def test_a_network_outside_loopback_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["import", str(SEED), "-o", str(tmp_path / "out"), "--runtime", "local"]
    assert main([*argv, "--local-network", "10.1.0.0/16"]) == 2
    assert "10.1.0.0/16 is not within 127.0.0.0/8" in capsys.readouterr().err
    assert main([*argv, "--local-network", "127.9.0.0/30"]) == 2  # 2 addresses, 4 workloads
    assert "fewer addresses than the 4 workloads" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_named_target_port_with_two_numbers_is_an_error_at_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tools = "ports: [{name: http, port: 80, targetPort: 8080}]"
    assert tools in SEED.read_text()
    text = SEED.read_text().replace(tools, "ports: [{name: http, port: 80, targetPort: http}]")
    text += (
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: tools-2, namespace: ops, labels: "
        "{app: frontend}}\nspec: {containers: [{name: web, ports: [{containerPort: 8081, "
        "name: http}]}]}\n"
    )
    source = tmp_path / "cluster.yaml"
    source.write_text(text)
    argv = ["import", str(source), "-o", str(tmp_path / "out"), *LOCAL]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    message = "error: targetPort 'http' is port 8080, 8081 on the pods the Service selects"
    assert f"{source}:67:46: {message}" in printed, printed
