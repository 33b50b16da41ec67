"""`meshwarden test`: policy test cases decided in-process, for CI."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from meshwarden.cli import main

ROOT = Path(__file__).resolve().parents[3]
SHOP = str(ROOT / "examples" / "shop")
FIXTURES = Path(__file__).parent / "fixtures" / "policy_tests"
SHOP_TESTS = str(FIXTURES / "shop_tests.yaml")
BAD_TESTS = str(FIXTURES / "bad_tests.yaml")


def _position(file: str, needle: str, nth: int = 0) -> str:
    """FILE:LINE:COL of the nth occurrence of `needle` in a fixture (1-based, as editors say)."""
    lines = Path(file).read_text().splitlines()
    hits = [(n, line.index(needle)) for n, line in enumerate(lines, 1) if needle in line]
    line, col = hits[nth]
    return f"{file}:{line}:{col + 1}"


def test_failing_cases_exit_1_and_print_file_line_expectation_and_trace(capsys):
    assert main(["test", SHOP_TESTS, SHOP]) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert (
        f"{SHOP_TESTS}:9: FAIL frontend may delete (wrong on purpose): "
        "expected ALLOW, got DENY" in out
    )
    assert (
        f"{SHOP_TESTS}:12: FAIL stranger gets the catalogue through rule 1 (wrong rule on "
        "purpose): expected rule 1, got 2 of shop/backend-access" in out
    )
    assert "+ shop/backend-access" in out  # explain's trace, under the failure
    assert "may read the catalogue" not in out  # passing cases stay quiet without -v
    assert "2 passed, 2 failed" in captured.err


def test_all_passing_cases_exit_0_and_arguments_may_come_in_any_order(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    lines = Path(SHOP_TESTS).read_text().splitlines()
    good.write_text("\n".join(lines[:8]) + "\n")
    assert main(["test", SHOP, str(good), "-v"]) == 0
    out = capsys.readouterr().out
    assert f"{good}:3: ok   frontend may read the catalogue" in out


def test_json_reports_each_case_with_what_was_expected_and_got(capsys):
    assert main(["test", SHOP_TESTS, SHOP, "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["passed"], report["failed"]) == (2, 2)
    first, _, third, fourth = report["tests"]
    assert first["passed"] and first["got"] == {
        "decision": "ALLOW",
        "policy": "shop/backend-access",
        "rule": 0,
    }
    assert third["expected"] == {"decision": "ALLOW"} and third["got"]["decision"] == "DENY"
    assert third["line"] == 9 and third["trace"]
    assert fourth["expected"] == {"decision": "ALLOW", "rule": 1} and fourth["got"]["rule"] == 2


def test_junit_xml_has_one_testcase_per_case_and_failures_with_the_trace(tmp_path, capsys):
    report = tmp_path / "junit.xml"
    assert main(["test", SHOP_TESTS, SHOP, "--junit", str(report)]) == 1
    root = ET.parse(report).getroot()
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "4", "2")
    cases = root.findall("testsuite/testcase")
    assert [c.get("line") for c in cases] == ["3", "6", "9", "12"]
    failure = cases[2].find("failure")
    assert failure is not None and failure.get("message") == "expected ALLOW, got DENY"
    assert "shop/backend-access" in (failure.text or "")
    assert cases[0].find("failure") is None


def test_malformed_cases_exit_2_naming_each_at_its_position(capsys):
    assert main(["test", BAD_TESTS, SHOP]) == 2
    err = capsys.readouterr().err
    for needle, message in [
        ("shop/nope", "request.to shop/nope: no such workload"),
        ("fromWorklod", "unknown field 'fromWorklod'"),
        ("PERMIT", "expect.decision: expected ALLOW or DENY"),
        ("/x}", "request.path: port 5432 of shop/db-1 is tcp"),
    ]:
        assert f"{_position(BAD_TESTS, needle)}: error: {message}" in err
    assert "meshwarden test: error: 4 input error(s); no test was run" in err


def test_invalid_policies_or_missing_inputs_exit_2(tmp_path, capsys):
    broken = tmp_path / "policies.yaml"
    broken.write_text("apiVersion: meshwarden.io/v1alpha1\nkind: Workload\nmetadata: {name: X}\n")
    assert main(["test", SHOP_TESTS, str(broken)]) == 2
    assert f"{broken}:3:18: error:" in capsys.readouterr().err
    assert main(["test", SHOP]) == 2
    assert "no test file given" in capsys.readouterr().err
    assert main(["test", SHOP_TESTS]) == 2
    assert "no policy files given" in capsys.readouterr().err
