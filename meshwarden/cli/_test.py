"""`meshwarden test TESTS.yaml... PATH...`: policy unit tests for CI, decided in-process."""

from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshwarden.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    InputError,
    add_output_format,
    fail,
    print_json,
    write_output_file,
)
from meshwarden.cli._explain import render, request_from
from meshwarden.cli._test_cases import KEY_OF, TestCase, is_test_file, read_cases
from meshwarden.engine import (
    CompiledMesh,
    Decision,
    Diagnostic,
    Severity,
    UsageError,
    collection_paused,
    decide,
    find_files,
    load,
)

HELP = """\
Run policy tests: each case is a request (the same fields as `meshwarden explain`) and the
decision it must get, optionally the policy and rule that must make it. Cases are decided
in-process on the compiled policies, exactly as `explain` decides them.

Arguments are test files and policy files or directories, in any order; a YAML file whose
top level has a `tests:` list is a test file, everything else is policy input.

  tests:
  - name: frontend may read the catalogue
    request: {to: shop/backend-1, port: 8080, fromWorkload: shop/frontend-1,
              method: GET, path: /api/catalogue}
    expect: {decision: ALLOW, policy: shop/backend-access, rule: 0}

request keys: to, port (required), from (SPIFFE ID), fromWorkload, sourceIp, method, path,
host, headers (mapping), jwtClaims (mapping with iss). expect keys: decision (ALLOW or DENY),
policy (ns/name or a cause such as default:deny), rule (index, or null for none).

A failure prints FILE:LINE, the expectation, the decision and explain's trace.

examples:
  meshwarden test policy-tests/ policies/
  meshwarden test shop-tests.yaml policies/ --junit report.xml

exit status: 0 every case passed, 1 a case failed, 2 usage or input error (invalid policies,
a malformed test file, a request naming an unknown workload or port)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "test",
        help="run policy test cases (for CI)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="test files, policy files or directories"
    )
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    add_output_format(p, help="text for people (default) or one JSON object for scripts")
    p.add_argument("-v", "--verbose", action="store_true", help="also list passing cases")
    p.set_defaults(func=run)


@dataclass(frozen=True, slots=True)
class Result:
    case: TestCase
    decision: Decision
    text: str  # explain's rendering, for failures only

    @property
    def passed(self) -> bool:
        return not self.problem

    @property
    def problem(self) -> str:
        expect, got = self.case.expect, self.decision
        if expect.decision != got.verdict:
            return f"expected {expect.decision}, got {got.verdict}"
        if expect.policy is not None and expect.policy != got.policy:
            return f"expected policy {expect.policy}, got {got.policy}"
        if expect.rule_given and expect.rule != got.rule:
            return f"expected rule {expect.rule}, got {got.rule} of {got.policy}"
        return ""

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "name": self.case.name,
            "file": self.case.location.file,
            "line": self.case.location.line,
            "passed": self.passed,
            "expected": self.case.expect.to_json(),
            "got": {
                "decision": self.decision.verdict,
                "policy": self.decision.policy,
                "rule": self.decision.rule,
            },
        }
        if not self.passed:
            found["message"] = self.problem
            found["trace"] = [t.to_json() for t in self.decision.trace]
        return found


def run(args: argparse.Namespace) -> int:
    with collection_paused():  # what the command loads lives until it ends: no collector walks
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        test_files, policy_files = _split(args.paths)
    except InputError as exc:
        return fail(str(exc))
    cases, problems = _read_all(test_files)
    mesh, problems = _mesh(policy_files, problems)
    results = run_cases(cases, mesh, problems) if mesh is not None else []
    if problems:
        for problem in sorted(problems):
            print(problem, file=sys.stderr)
        return fail(f"{len(problems)} input error(s); no test was run")
    if args.junit:
        write_junit(results, args.junit)
    _report(results, args)
    return EXIT_OK if all(r.passed for r in results) else EXIT_FAILED


def _split(paths: list[str]) -> tuple[list[str], list[str]]:
    try:
        files = find_files(paths)
    except UsageError as exc:
        raise InputError(str(exc)) from None
    tests = [f for f in files if is_test_file(f)]
    policies = [f for f in files if f not in tests]
    if not tests:
        raise InputError("no test file given (a YAML file with a top-level 'tests:' list)")
    if not policies:
        raise InputError("no policy files given; name the policy files or directories too")
    return tests, policies


def _read_all(files: list[str]) -> tuple[list[TestCase], list[Diagnostic]]:
    cases: list[TestCase] = []
    problems: list[Diagnostic] = []
    for file in files:
        found, bad = read_cases(file)
        cases.extend(found)
        problems.extend(bad)
    return cases, problems


def _mesh(
    files: list[str], problems: list[Diagnostic]
) -> tuple[CompiledMesh | None, list[Diagnostic]]:
    result = load(files)
    return result.compiled, [*problems, *result.errors]


def run_cases(
    cases: list[TestCase], mesh: CompiledMesh, problems: list[Diagnostic]
) -> list[Result]:
    """Decide every case; a request the mesh cannot build becomes a problem at its field."""
    results = []
    for case in cases:
        named: list[str] = []
        try:
            request = request_from(case.fields, mesh, _namer(named))
        except InputError as exc:
            where = case.at("request", KEY_OF[named[0]]) if named else case.at("request")
            problems.append(Diagnostic(where, Severity.ERROR, str(exc)))
            continue
        plan = mesh.plan(request.destination)
        decision = decide(plan, request)
        result = Result(case, decision, "")
        if not result.passed:  # decide again, traced, only for the failures
            decision = decide(plan, request, explain=True)
            result = Result(case, decision, render(decision, request))
        results.append(result)
    return results


def _namer(named: list[str]) -> Callable[[str], str]:
    def flag(attribute: str) -> str:
        named.append(attribute)
        return f"request.{KEY_OF[attribute]}"

    return flag


def _report(results: list[Result], args: argparse.Namespace) -> None:
    failed = [r for r in results if not r.passed]
    if args.output == "json":
        print_json(
            {
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "tests": [r.to_json() for r in results],
            }
        )
        return
    for r in results:
        where = f"{r.case.location.file}:{r.case.location.line}"
        if not r.passed:
            print(f"{where}: FAIL {r.case.name}: {r.problem}")
            print("\n".join("    " + line for line in r.text.splitlines()))
        elif args.verbose:
            print(f"{where}: ok   {r.case.name}")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", file=sys.stderr)


def write_junit(results: list[Result], path: str) -> None:
    """One <testsuite> per test file, one <testcase> per case; failures carry the trace."""
    root = ET.Element("testsuites", name="meshwarden test")
    suites: dict[str, ET.Element] = {}
    for r in results:
        file = r.case.location.file
        if file not in suites:
            suites[file] = ET.SubElement(root, "testsuite", name=file)
        case = ET.SubElement(
            suites[file],
            "testcase",
            name=r.case.name,
            classname=file,
            file=file,
            line=str(r.case.location.line),
        )
        if not r.passed:
            failure = ET.SubElement(case, "failure", message=r.problem, type="PolicyTestFailure")
            failure.text = r.text
    for suite in suites.values():
        cases = list(suite)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if len(c))))
        suite.set("errors", "0")
    root.set("tests", str(len(results)))
    root.set("failures", str(sum(1 for r in results if not r.passed)))
    root.set("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S"))
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    write_output_file(Path(path), data, "--junit")
