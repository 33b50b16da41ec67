"""The cluster of the Kubernetes e2e network-policy suite: namespaces x, y, z, each with pods
a, b, c (label `pod: a|b|c`, the namespace's default service account, container ports 80 and
81 on TCP, UDP and SCTP named serve-80-tcp, serve-80-udp, ...), and the helpers that import
it and read `matrix`."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from meshwarden.cli import main

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
ALL = tuple(f"{ns}/{pod}" for ns in NAMESPACES for pod in PODS)
Pairs = set[tuple[str, str]]


def address(ns: str, pod: str) -> str:
    return f"10.0.{NAMESPACES.index(ns) + 1}.{PODS.index(pod) + 1}"


def cluster(labels: dict[str, dict[str, str]] | None = None) -> str:
    """The inventory as `kubectl get ns,pods -o yaml` would print it (a List); `labels`
    replaces the labels of some pods ("x/a": {...})."""
    items = []
    for ns in NAMESPACES:
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"ns": ns}},
            }
        )
        for pod in PODS:
            pod_labels = (labels or {}).get(f"{ns}/{pod}", {"pod": pod})
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": ns, "labels": pod_labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "c",
                                "image": "agnhost",
                                "ports": [
                                    {
                                        "containerPort": number,
                                        "name": f"serve-{number}-{protocol.lower()}",
                                        "protocol": protocol,
                                    }
                                    for protocol in ("TCP", "UDP", "SCTP")
                                    for number in (80, 81)
                                ],
                            }
                        ]
                    },
                    "status": {"phase": "Running", "podIP": address(ns, pod)},
                }
            )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=1)


def every_pair() -> Pairs:
    return {(s, d) for s in ALL for d in ALL if s != d}


def pairs(sources: Iterable[str], destinations: Iterable[str]) -> Pairs:
    return {(s, d) for s in sources for d in destinations if s != d}


Importer = Callable[..., tuple[int, Path]]


@pytest.fixture
def import_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, Path]]:
    """Write the cluster plus `policies` (YAML text) and run `meshwarden import`; the exit
    code and the output directory."""
    counter = iter(range(100))

    def run(
        policies: str, *flags: str, labels: dict[str, dict[str, str]] | None = None
    ) -> tuple[int, Path]:
        n = next(counter)
        source = tmp_path / f"in-{n}"
        source.mkdir()
        (source / "cluster.json").write_text(cluster(labels))
        (source / "policies.yaml").write_text(textwrap.dedent(policies))
        out = tmp_path / f"out-{n}"
        return main(["import", str(source), "-o", str(out), *flags]), out

    return run


def matrix(out: Path, capsys: pytest.CaptureFixture[str], port: int, *flags: str) -> Pairs:
    """The allowed pairs `meshwarden matrix -o json` prints."""
    capsys.readouterr()
    assert main(["matrix", str(out), "--port", str(port), "-o", "json", *flags]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["port"] == port
    assert sorted(printed["workloads"]) == sorted(ALL)
    return {(s, d) for s, d in printed["allowed"]}
