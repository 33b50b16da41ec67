"""`meshwarden lint`: each code on a fixture named after it, at its exact position."""

import json
import time
from pathlib import Path

import pytest
from meshwarden.engine import LINT_CODES, lint, load, parse_text

from meshwarden.cli import main

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).parent / "fixtures" / "lint"
BASE = str(FIXTURES / "base.yaml")
MESH = str(FIXTURES / "mesh.yaml")


def _at(file: Path, needle: str, nth: int = 0) -> tuple[str, int, int]:
    """(file, line, column) of the nth occurrence of `needle`, counted by hand from the text."""
    hits = [
        (n, line.index(needle) + 1)
        for n, line in enumerate(file.read_text().splitlines(), 1)
        if needle in line
    ]
    return str(file), *hits[nth]


def _lint(capsys, *paths: str, extra: tuple[str, ...] = ()) -> tuple[int, list[dict]]:
    code = main(["lint", *paths, "-o", "json", *extra])
    return code, json.loads(capsys.readouterr().out)["findings"]


def _fixture_paths(name: str) -> list[str]:
    fixture = FIXTURES / f"{name}.yaml"
    own_mesh = "kind: Mesh" in fixture.read_text()
    return [BASE, *([] if own_mesh else [MESH]), str(fixture)]


# code → (file the finding is in, text at its position); found by hand in the fixture
EXPECTED = {
    "MW100": ("MW100", "Bad-Name"),
    "MW101": ("MW101", "to: [{methods: [POST]"),
    "MW102": ("MW102", "shpo"),
    "MW103": ("MW103", "spiffe://example.org/ns/shop/sa/frontent"),
    "MW104": ("MW104", "spiffe://example.com"),
    "MW105": ("MW105", "https://idp.example.com]"),
    "MW106": ("MW106", "from: [{identities"),
    "MW107": ("base", "15080}"),
    "MW201": ("MW201", "to: [{paths: [/health]}]"),
    "MW202": ("MW202", '{identities: ["*"]}'),
    "MW203": ("MW201", "PERMISSIVE"),
    "MW204": ("MW204", "https://login.example.com"),
    "MW301": ("MW301", "{matchLabels: {app: backedn}}"),
    "MW303": ("MW303", '"2026-01-15"'),
    "MW304": ("MW304", "from", 1),
}


def test_the_shared_fixture_and_the_examples_lint_clean(capsys):
    assert _lint(capsys, BASE, MESH) == (0, [])
    assert _lint(capsys, str(ROOT / "examples" / "shop")) == (0, [])
    assert _lint(capsys, str(ROOT / "examples" / "seed")) == (0, [])


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_each_code_is_reported_at_its_exact_position_with_a_fix(code, capsys):
    fixture_name = "MW201" if code == "MW203" else code
    file_name, needle, *nth = EXPECTED[code]
    exit_code, findings = _lint(capsys, *_fixture_paths(fixture_name))
    expected_file = FIXTURES / f"{file_name}.yaml"
    where = _at(expected_file, needle, *nth)
    found = [f for f in findings if f["code"] == code]
    assert [(f["file"], f["line"], f["column"]) for f in found] == [where]
    finding = found[0]
    severity = LINT_CODES[code][0].value
    assert (finding["severity"], finding["docs"]) == (severity, f"docs/lint.md#{code.lower()}")
    assert finding["fix"] and finding["message"]
    assert exit_code == (1 if severity == "error" else 0)


def test_fixes_name_the_likely_intended_value(capsys):
    fixes = {}
    for code in ("MW102", "MW103", "MW104", "MW105"):
        _, findings = _lint(capsys, *_fixture_paths(code))
        fixes[code] = next(f["fix"] for f in findings if f["code"] == code)
    assert fixes == {
        "MW102": "did you mean 'shop'?",
        "MW103": "did you mean spiffe://example.org/ns/shop/sa/frontend?",
        "MW104": "write spiffe://example.org/ns/shop/sa/frontend",
        "MW105": "write 'https://idp.example.com/' exactly",
    }


def test_unused_rules_need_a_flow_window_and_name_the_rule_no_flow_hit(tmp_path, capsys):
    paths = _fixture_paths("MW302")
    assert [f["code"] for f in _lint(capsys, *paths)[1]] == []
    flows = tmp_path / "flows.ndjson"
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    record = {
        "time": now,
        "sourceIdentity": "spiffe://example.org/ns/shop/sa/frontend",
        "workload": "shop/backend-1",
        "port": 8080,
        "decision": "allow",
        "policy": "shop/backend-callers",
        "rule": 0,
        "dryRun": None,
    }
    flows.write_text(json.dumps(record) + "\n")
    _, findings = _lint(capsys, *paths, extra=("--flows", str(flows), "--since", "1h"))
    where = _at(FIXTURES / "MW302.yaml", "from: [{namespaces: [ops]}]")
    assert [(f["code"], f["file"], f["line"], f["column"]) for f in findings] == [("MW302", *where)]


def test_fail_on_warning_fails_on_warnings_and_text_output_has_position_code_and_fix(capsys):
    paths = _fixture_paths("MW202")
    assert main(["lint", *paths]) == 0
    out = capsys.readouterr().out
    file, line, col = _at(FIXTURES / "MW202.yaml", '{identities: ["*"]}')
    assert out.startswith(f"{file}:{line}:{col}: warning: MW202 rule 0 of shop/anyone")
    assert "    fix: name the callers" in out and "(docs/lint.md#mw202)" in out
    assert main(["lint", *paths, "--fail-on", "warning"]) == 1


def test_a_document_silences_codes_for_itself_only(tmp_path, capsys):
    text = (
        (FIXTURES / "MW202.yaml")
        .read_text()
        .replace(
            "namespace: shop}",
            'namespace: shop, annotations: {meshwarden.io/lint-ignore: "MW202"}}',
        )
    )
    quiet = tmp_path / "quiet.yaml"
    quiet.write_text(text + "---\n" + (FIXTURES / "MW102.yaml").read_text())
    codes = [f["code"] for f in _lint(capsys, BASE, MESH, str(quiet))[1]]
    assert codes == ["MW102"]


def test_usage_errors_exit_2(capsys):
    assert main(["lint", str(FIXTURES / "missing")]) == 2
    assert main(["lint", BASE, MESH, "--since", "1h"]) == 2
    assert "--since needs --flows" in capsys.readouterr().err


def test_permissive_namespaces_workloads_and_ports_are_each_reported_at_their_field(
    tmp_path, capsys
):
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "apiVersion: meshwarden.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\n"
        "spec: {trustDomain: example.org, namespaces: {legacy: {mtls: PERMISSIVE}}}\n---\n"
        "apiVersion: meshwarden.io/v1alpha1\nkind: Workload\n"
        "metadata: {name: api-1, namespace: shop}\n"
        "spec:\n  mtls: PERMISSIVE\n  addresses: [127.0.0.3]\n"
        "  ports: [{port: 8080, protocol: http}, {port: 9090, protocol: http, mtls: PERMISSIVE}]\n"
    )
    _, findings = _lint(capsys, str(mesh))
    found = [(f["file"], f["line"], f["column"]) for f in findings if f["code"] == "MW203"]
    assert found == [_at(mesh, "PERMISSIVE", n) for n in range(3)]


def test_a_changed_snapshot_is_linted_afresh_not_from_the_previous_one():
    """`check` and `lint` share one shadowed-rule analysis per snapshot; an incremental change
    makes a new snapshot whose findings are its own."""
    result = load(_fixture_paths("MW304"))
    assert result.compiled is not None
    assert [f.code for f in lint(result.compiled)].count("MW304") == 1
    fixed = (
        (FIXTURES / "MW304.yaml")
        .read_text()
        .replace("  - from: [{workloads: {matchLabels: {app: frontend}}}]\n    to:", "  - to:")
    )
    [document], problems = parse_text(fixed, str(FIXTURES / "MW304.yaml"))
    assert not problems
    changed, _ = result.compiled.with_policy_changes(upserts=[document])
    assert "MW304" not in [f.code for f in lint(changed)]
    assert [f.code for f in lint(result.compiled)].count("MW304") == 1
