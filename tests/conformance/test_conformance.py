"""Conformance suite: golden cases derived from the spec, never from the engine's output.

Two case directories:

* ``cases/<NNN-name>/``: policy YAML files plus ``case.yaml`` (a request and the expected decision).
  The request maps 1:1 onto ``meshwarden explain`` flags; the result is read from ``-o json``.
* ``check/<NNN-name>/``: policy YAML files plus ``expected.yaml`` (exit code and diagnostics of
  ``meshwarden check``, with exact 1-based line/column).

The policy files of a case are passed to the CLI explicitly (every ``*.yaml`` of the case directory
except ``case.yaml``/``expected.yaml``, in sorted order), or, when the case has a ``policies/``
sub-directory, that directory is passed as the PATH (exercising directory loading).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshwarden.cli import main

HERE = Path(__file__).parent
EXPLAIN_CASES = sorted(p for p in (HERE / "cases").iterdir() if (p / "case.yaml").is_file())
CHECK_CASES = sorted(p for p in (HERE / "check").iterdir() if (p / "expected.yaml").is_file())
META_FILES = {"case.yaml", "expected.yaml"}
DIAGNOSTIC = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<severity>error|warning): (?P<message>.*)$"
)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


# Cases whose request is an input error (exit 2) may use policies `check` rejects on purpose.
VALID_POLICY_CASES = [p for p in EXPLAIN_CASES if "exit" not in _load(p / "case.yaml")["expect"]]


def policy_paths(case_dir: Path) -> list[str]:
    if (case_dir / "policies").is_dir():
        return [str(case_dir / "policies")]
    return [str(p) for p in sorted(case_dir.glob("*.yaml")) if p.name not in META_FILES]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def explain_argv(case_dir: Path, request: dict[str, Any]) -> list[str]:
    argv = ["explain", *policy_paths(case_dir), "--port", str(request["port"])]
    flags = {
        "to": "--to",
        "to_ip": "--to-ip",
        "protocol": "--protocol",
        "from": "--from",
        "from_workload": "--from-workload",
        "source_ip": "--source-ip",
        "method": "--method",
        "path": "--path",
        "host": "--host",
    }
    for key, flag in flags.items():
        if key in request:
            argv += [flag, str(request[key])]
    for name, value in (request.get("headers") or {}).items():
        argv += ["--header", f"{name}={value}"]
    if "jwt_claims" in request:
        claims = request["jwt_claims"]  # a string is passed verbatim (to test bad JSON)
        argv += ["--jwt-claims", claims if isinstance(claims, str) else json.dumps(claims)]
    unknown = set(request) - set(flags) - {"port", "headers", "jwt_claims"}
    assert not unknown, f"case.yaml request has unknown keys {unknown}"
    return [*argv, "-o", "json"]


@pytest.mark.parametrize("case_dir", EXPLAIN_CASES, ids=[p.name for p in EXPLAIN_CASES])
def test_explain(case_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = _load(case_dir / "case.yaml")
    expect = case["expect"]
    argv = explain_argv(case_dir, case["request"])
    code, out, err = run_cli(argv, capsys)
    context = f"\n{case['description']}\nargv: {argv}\nstdout: {out}\nstderr: {err}"
    if "exit" in expect:
        assert code == expect["exit"], f"exit code {code}, expected {expect['exit']}{context}"
        return
    result = json.loads(out)
    got = {
        "decision": result.get("decision"),
        "policy": result.get("policy"),
        "rule": result.get("rule"),
    }
    want = {"decision": expect["decision"], "policy": expect["policy"], "rule": expect["rule"]}
    assert got == want, f"decision differs{context}"
    assert code == (0 if expect["decision"] == "ALLOW" else 1), f"exit code {code}{context}"
    if "dryRun" in expect:
        dry = [
            {"policy": e.get("policy"), "decision": e.get("decision")}
            for e in result.get("dryRun", [])
        ]
        assert dry == expect["dryRun"], f"dryRun differs{context}"
    if "audit" in expect:
        audit = [
            {"policy": e.get("policy"), "rule": e.get("rule")} for e in result.get("audit", [])
        ]
        assert audit == expect["audit"], f"audit differs{context}"
    if "direction" in expect:
        assert result.get("direction") == expect["direction"], f"direction differs{context}"
    if "egress" in expect:
        egress = result.get("egress")
        if expect["egress"] is not None and egress is not None:
            egress = {k: egress.get(k) for k in expect["egress"]}
        assert egress == expect["egress"], f"egress differs{context}"


@pytest.mark.parametrize("case_dir", EXPLAIN_CASES, ids=[p.name for p in EXPLAIN_CASES])
def test_explain_text_output(case_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`-o text` exits like `-o json` and names the cause of the decision (semantics 9)."""
    case = _load(case_dir / "case.yaml")
    expect = case["expect"]
    argv = explain_argv(case_dir, case["request"])[:-2]  # drop "-o json": text is the default
    code, out, err = run_cli(argv, capsys)
    if "exit" in expect:
        assert code == expect["exit"], f"exit code {code}\n{out}{err}"
        return
    assert code == (0 if expect["decision"] == "ALLOW" else 1), f"exit code {code}\n{out}{err}"
    assert expect["policy"] in out, f"text output does not name {expect['policy']}:\n{out}"


@pytest.mark.parametrize("case_dir", VALID_POLICY_CASES, ids=[p.name for p in VALID_POLICY_CASES])
def test_explain_case_policies_pass_check(
    case_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The policies of every explain case (except input-error cases) are valid per `check`."""
    code, out, err = run_cli(["check", *policy_paths(case_dir)], capsys)
    errors = [d for d in parse_diagnostics(out + err) if d["severity"] == "error"]
    assert code == 0 and not errors, f"check rejects the case's policies:\n{out}{err}"


def parse_diagnostics(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        m = DIAGNOSTIC.match(line.strip())
        if m:
            d: dict[str, Any] = m.groupdict()
            d["line"], d["col"] = int(d["line"]), int(d["col"])
            found.append(d)
    return found


def _same_file(reported: str, expected: str) -> bool:
    rep = Path(reported).as_posix()
    return rep == expected or rep.endswith("/" + expected)


def _matches(diag: dict[str, Any], want: dict[str, Any], *, check_message: bool = True) -> bool:
    if not (
        _same_file(diag["file"], want["file"])
        and diag["line"] == want["line"]
        and diag["col"] == want["col"]
        and diag["severity"] == want["severity"]
    ):
        return False
    if not check_message:
        return True
    contains = want["contains"] if isinstance(want["contains"], list) else [want["contains"]]
    return any(str(c).lower() in diag["message"].lower() for c in contains)


@pytest.mark.parametrize("case_dir", CHECK_CASES, ids=[p.name for p in CHECK_CASES])
def test_check(case_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = _load(case_dir / "expected.yaml")
    code, out, err = run_cli(["check", *policy_paths(case_dir)], capsys)
    diags = parse_diagnostics(out + err)
    context = f"\n{expected['description']}\noutput:\n{out}{err}"
    for want in expected["diagnostics"]:
        assert any(_matches(d, want) for d in diags), f"missing diagnostic {want}{context}"
    if expected.get("exhaustive"):
        wanted_errors = [w for w in expected["diagnostics"] if w["severity"] == "error"]
        for d in diags:
            if d["severity"] == "error":
                assert any(_matches(d, w, check_message=False) for w in wanted_errors), (
                    f"unexpected error {d}{context}"
                )
    if expected.get("noOtherWarnings"):
        wanted_warnings = [w for w in expected["diagnostics"] if w["severity"] == "warning"]
        for d in diags:
            if d["severity"] == "warning":
                assert any(_matches(d, w, check_message=False) for w in wanted_warnings), (
                    f"unexpected warning {d}{context}"
                )
    assert code == expected["exit"], f"exit code {code}, expected {expected['exit']}{context}"


def test_check_missing_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["check", str(tmp_path / "does-not-exist.yaml")], capsys)
    assert code == 2, f"exit {code}\n{out}{err}"


def test_case_counts() -> None:
    assert len(EXPLAIN_CASES) >= 60
    assert len(CHECK_CASES) >= 20


def test_every_semantic_rule_is_covered() -> None:
    covered: set[str] = set()
    for case_dir in EXPLAIN_CASES:
        covered.update(_load(case_dir / "case.yaml")["covers"])
    for case_dir in CHECK_CASES:
        covered.update(_load(case_dir / "expected.yaml")["covers"])
    missing = {f"semantics-{i}" for i in range(1, 10)} - covered
    assert not missing
