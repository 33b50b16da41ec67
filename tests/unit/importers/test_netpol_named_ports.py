"""An ingress rule's named port opens, on each pod the policy selects, that pod's own container
port of that name (Kubernetes API reference, NetworkPolicyPort.port: "a named port on a pod").
Here pods of namespace x give `web` different numbers: x/a and x/d 80, x/b 8080, and x/c has no
`web` at all; every x pod declares both 80 and 8080 under other names too. Expected matrices
written by hand from that rule."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from meshwarden.cli import main

from .conftest import Pairs

X = ("x/a", "x/b", "x/c", "x/d")
CLIENT = "z/client"
PORTS = {
    "x/a": {"web": 80, "admin": 8080},
    "x/b": {"plain": 80, "web": 8080},
    "x/c": {"other": 80, "alt": 8080},
    "x/d": {"web": 80, "admin": 8080},
    CLIENT: {"http": 80, "alt": 8080},
}
POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-z, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
    ports: [{port: web}]
"""


def _cluster() -> str:
    items: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"ns": n}}}
        for n in ("x", "z")
    ]
    for ref, ports in PORTS.items():
        namespace, name = ref.split("/")
        container = {
            "name": "c",
            "ports": [{"name": k, "containerPort": v} for k, v in ports.items()],
        }
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
                "spec": {"containers": [container]},
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


@pytest.fixture
def out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    (source / "cluster.json").write_text(_cluster())
    (source / "policy.yaml").write_text(textwrap.dedent(POLICY))
    assert main(["import", str(source), "-o", str(tmp_path / "out")]) == 0
    assert "a named port is a different number" in capsys.readouterr().err
    return tmp_path / "out"


def _matrix(out: Path, port: int, capsys: pytest.CaptureFixture[str]) -> Pairs:
    capsys.readouterr()
    assert main(["matrix", str(out), "--port", str(port), "-o", "json"]) == 0
    return {(s, d) for s, d in json.loads(capsys.readouterr().out)["allowed"]}


# Every x pod is isolated (podSelector {}); z/client is selected by no policy, so every pod
# reaches it. Into x only z/client, and only on the pod's own `web` port.
TO_CLIENT = {(s, CLIENT) for s in X}
TRUTH = {
    80: TO_CLIENT | {(CLIENT, "x/a"), (CLIENT, "x/d")},
    8080: TO_CLIENT | {(CLIENT, "x/b")},
}


@pytest.mark.parametrize("port", sorted(TRUTH))
def test_a_named_port_opens_each_pods_own_number_and_nothing_else(
    out: Path, capsys: pytest.CaptureFixture[str], port: int
) -> None:
    assert _matrix(out, port, capsys) == TRUTH[port]


def test_every_selected_pod_stays_isolated_and_the_output_passes_check(
    out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """x/c has no `web`: selected, hence isolated, and nothing opens for it."""
    assert main(["check", str(out)]) == 0
    for port in (80, 8080):
        assert (CLIENT, "x/c") not in _matrix(out, port, capsys)
        assert not {(s, d) for s in X for d in X if s != d} & _matrix(out, port, capsys)
