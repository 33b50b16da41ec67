"""What cannot be translated exactly is an error at its FILE:LINE:COL, and nothing is written;
pods of one service account told apart by a policy get distinct identities (or a refusal)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from meshwarden.cli import main

from .conftest import Importer, matrix

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
"""


def _errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> list[str]:
    source = tmp_path / "in.yaml"
    source.write_text(textwrap.dedent(text))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["import", str(source), "-o", str(out)]) == 1
    assert not out.exists()  # nothing half-written
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("  ingres: []\n", "in.yaml:6:3: error: spec.ingres is not supported here"),
        (
            "  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n",
            "in.yaml:7:12: error: ipBlock cannot be combined with podSelector",
        ),
        (
            "  ingress:\n  - ports: [{port: http, endPort: 90}]\n",
            "in.yaml:7:35: error: endPort cannot be used with a named port",
        ),
        (
            "  ingress:\n  - ports: [{port: 80, endPort: 79}]\n",
            "in.yaml:7:33: error: endPort 79 must be between port 80 and 65535",
        ),
        (
            "  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.1.0.0/16]}}]\n",
            "in.yaml:7:51: error: except 10.1.0.0/16 is not inside cidr 10.0.0.0/24",
        ),
        (
            "  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}, matchFields: {}}}]\n",
            "in.yaml:7:50: error: spec.ingress[0].from[0].podSelector.matchFields is not "
            "supported here",
        ),
        (
            "  policyTypes: [Ingress, Sideways]\n",
            "in.yaml:6:26: error: policy type 'Sideways' is not Ingress or Egress",
        ),
        (
            "  policyTypes: [Egress]\n  ingress: [{}]\n",
            "in.yaml:7:12: error: ingress rules without Ingress in policyTypes have no effect",
        ),
    ],
)
def test_an_unsupported_or_invalid_field_is_an_error_at_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rest: str, expected: str
) -> None:
    lines = _errors(tmp_path, capsys, POLICY + rest)
    assert len(lines) == 1 and lines[0].startswith(str(tmp_path / expected)), lines


def test_a_kind_import_does_not_know_is_an_error_at_its_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _errors(tmp_path, capsys, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path}/in.yaml:2:7: error: ConfigMap (v1) cannot be imported")


A_FROM_B = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
"""


def test_pods_sharing_a_service_account_get_distinct_identities_when_a_policy_tells_them_apart(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = import_cluster(A_FROM_B)
    assert code == 0
    notes = capsys.readouterr().err.splitlines()
    assert notes[0].startswith("note: pods a, b, c share service account x/default; this peer at ")
    assert notes[0].endswith(
        "policies.yaml:8:7 selects only b: each gets its own identity (.../sa/default/pod/NAME)"
    )
    written = (out / "x.yaml").read_text()
    assert "spiffeId: spiffe://cluster.local/ns/x/sa/default/pod/b" in written
    assert ("x/c", "x/a") not in matrix(out, capsys, 80)  # c proves an identity of its own


def test_no_split_identities_refuses_at_the_selector_that_tells_pods_apart(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = import_cluster(A_FROM_B, "--no-split-identities")
    assert code == 1
    assert not out.exists()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        "policies.yaml:8:7: error: pods a, b, c share service account x/default (one identity) "
        "but this peer tells them apart; allowing their identity would widen the policy (run "
        "without --no-split-identities to give them distinct identities, or give the pods their "
        "own service account)"
    )


def test_a_missing_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("meshwarden import: error: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: []}\nstatus: {podIP: 10.0.0.300}\n",
            "in.yaml:5:17: error: '10.0.0.300' is not an IP address",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: true, containers: []}\n",
            "in.yaml:4:21: error: hostNetwork pods share their node's address",
        ),
        (
            "kind: Pod\nmetadata: {name: web-0}\nspec: {containers: []}\n---\n"
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: web}\n"
            "spec: {template: {spec: {containers: []}}}\n",
            "in.yaml:8:18: error: this becomes Workload default/web-0, as ",
        ),
        (
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: meshwarden-system}\n"
            "spec: {podSelector: {}}\n",
            "in.yaml:3:32: error: meshwarden-system is the Mesh's root namespace",
        ),
    ],
)
def test_an_object_that_cannot_be_translated_exactly_is_an_error_at_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    api = "networking.k8s.io/v1" if "NetworkPolicy" in text else "v1"
    lines = _errors(tmp_path, capsys, f"apiVersion: {api}\n{text}")
    assert len(lines) == 1 and lines[0].startswith(str(tmp_path / expected)), lines


def test_a_namespace_selector_that_matches_no_namespace_of_the_input_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without Namespace objects a namespace has only kubernetes.io/metadata.name: a selector
    on other labels allows nothing, and stderr says why."""
    source = tmp_path / "in.yaml"
    source.write_text(
        POLICY + "  ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}}]}]\n"
    )
    assert main(["import", str(source), "-o", str(tmp_path / "out")]) == 0
    notes = capsys.readouterr().err
    assert f"note: {source}:6:41: namespaceSelector matches no namespace of the input" in notes
    written = yaml.safe_load_all((tmp_path / "out" / "x.yaml").read_text())
    assert [d["spec"]["rules"] for d in written if d["kind"] == "AuthorizationPolicy"] == [[]]
