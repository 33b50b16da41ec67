"""The seed's NetworkPolicy, end to end: its cluster is imported with `import --runtime local`,
run by `meshwarden up` with real Envoy sidecars, and every (from, to) pair is tried with a real
request through the source's sidecar. What gets through must be exactly what `matrix` says AND
what the truth table below says, written by hand from the seed ("only pods with the app:
frontend label can access port 8080 of the backend service; all other access requests are
denied by default") and the Kubernetes documentation (a podSelector peer selects pods of the
policy's own namespace; pods no policy selects are not isolated)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshwarden.cli import main
from meshwarden.demo import sample_apps

from .._loopback import claim_net, claim_ports
from ._live import MeshwardenUp, request, wait_for

SEED = Path(__file__).parent / "seed" / "cluster.yaml"
FRONTEND, BACKEND, REPORTS, TOOLS = (
    "shop/frontend-1",
    "shop/backend-1",
    "shop/reports-1",
    "ops/tools-1",
)
WORKLOADS = (FRONTEND, BACKEND, REPORTS, TOOLS)
# The destinations by (service, pod port): the Service each request goes through.
SERVICES = {
    (BACKEND, 8080): "shop/backend",
    (BACKEND, 9090): "shop/backend",
    (FRONTEND, 8080): "shop/frontend",
    (TOOLS, 8080): "ops/tools",
}
Pairs = set[tuple[str, str]]
TRUTH: dict[int, Pairs] = {
    # backend-1 is isolated for ingress: only shop's app=frontend pods, on TCP 8080 (tools-1 is
    # labelled app: frontend but lives in ops). frontend-1 and tools-1 are selected by no
    # policy: everyone reaches them. reports-1 serves nothing.
    8080: {(FRONTEND, BACKEND)}
    | {(s, FRONTEND) for s in (BACKEND, REPORTS, TOOLS)}
    | {(s, TOOLS) for s in (FRONTEND, BACKEND, REPORTS)},
    # the policy opens 8080 only: the backend's metrics port is closed to everyone
    9090: set(),
}

# Allowed pairs that show every sidecar has its configuration (each source, each destination)
# before a denial is believed: a listener not yet there would look like a denial.
READY = [(FRONTEND, BACKEND), (BACKEND, FRONTEND), (REPORTS, FRONTEND), (TOOLS, FRONTEND)]
READY += [(FRONTEND, TOOLS)]


@dataclass
class SeedMesh:
    out: Path
    documents: dict[str, dict[str, Any]]  # Workload documents by NS/NAME
    net: str  # their addresses' 127.X.Y

    def local_port(self, source: str, destination: str, port: int) -> int:
        service = SERVICES[(destination, port)]
        upstreams = self.documents[source]["spec"].get("upstreams", [])
        found = [u for u in upstreams if u["service"] == service and u["port"] == port]
        assert len(found) == 1, (source, service, port, upstreams)
        return int(found[0]["localPort"])

    def status(self, source: str, destination: str, port: int) -> int | str:
        """The HTTP status GET / gets through the source's upstream, or how it failed."""
        return request("127.0.0.1", self.local_port(source, destination, port), path="/")

    def reaches(self, source: str, destination: str, port: int) -> bool:
        return self.status(source, destination, port) == 200


def _workloads(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(out.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document["kind"] == "Workload":
                meta = document["metadata"]
                found[f"{meta['namespace']}/{meta['name']}"] = document
    return found


def _app_ports(documents: dict[str, dict[str, Any]]) -> list[int]:
    return [p["targetPort"] for d in documents.values() for p in d["spec"].get("ports", [])]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedMesh]:
    root = tmp_path_factory.mktemp("seed")
    out = root / "mesh"
    net = claim_net()
    network = f"{net}.0/24"
    first = claim_ports(40)
    argv = ["import", str(SEED), "-o", str(out), "--runtime", "local"]
    argv += ["--local-network", network, "--local-first-port", str(first)]
    assert main(argv) == 0
    documents = _workloads(out)
    up = MeshwardenUp(out, root / "data")
    mesh = SeedMesh(out, documents, net)
    with sample_apps(_app_ports(documents), []):
        up.start()
        try:
            for source, destination in READY:
                ready = wait_for(partial(mesh.reaches, source, destination, 8080), True, 90)
                assert ready, (source, destination, up.log.read_text()[-3000:])
            yield mesh
        finally:
            assert up.stop() == 0, up.log.read_text()[-3000:]


def _matrix(out: Path, port: int, capsys: pytest.CaptureFixture[str]) -> Pairs:
    capsys.readouterr()
    assert main(["matrix", str(out), "--port", str(port), "-o", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(printed["workloads"]) == sorted(WORKLOADS)
    return {(s, d) for s, d in printed["allowed"]}


@pytest.mark.parametrize("port", sorted(TRUTH))
def test_every_pair_behaves_as_matrix_and_the_seed_say(
    seed: SeedMesh, port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _matrix(seed.out, port, capsys) == TRUTH[port]
    tried = [(s, d) for s in WORKLOADS for (d, p) in SERVICES if p == port and s != d]
    answers = {(s, d): seed.status(s, d, port) for s, d in tried}
    assert {pair for pair, status in answers.items() if status == 200} == TRUTH[port]
    # each denial is the destination sidecar's: 403 from its HTTP RBAC on the http port 8080,
    # the connection closed by its network RBAC on the tcp port 9090 (metrics)
    refused = 403 if port == 8080 else "connection failed (RemoteDisconnected)"
    denied = {answers[pair] for pair in answers if pair not in TRUTH[port]}
    assert denied == {refused}, answers
    assert len(tried) == (9 if port == 8080 else 3)  # every source to every serving pod


def test_the_imported_workloads_run_on_loopback_with_their_pod_ports(seed: SeedMesh) -> None:
    backend = seed.documents[BACKEND]["spec"]
    assert [p["port"] for p in backend["ports"]] == [8080, 9090]  # the pod's own numbers
    addresses = [a for d in seed.documents.values() for a in d["spec"]["addresses"]]
    assert all(a.startswith(f"{seed.net}.") for a in addresses), addresses
    assert "ports" not in seed.documents[REPORTS]["spec"]
