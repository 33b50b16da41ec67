"""Policy test files for `meshwarden test`: cases read with the place each was written.

```yaml
tests:
- name: frontend may read the catalogue
  request: {to: shop/backend-1, port: 8080, fromWorkload: shop/frontend-1, path: /api/catalogue}
  expect: {decision: ALLOW, policy: shop/backend-access, rule: 0}   # policy and rule optional
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshwarden.cli._explain import RequestFields
from meshwarden.engine import (
    Diagnostic,
    Location,
    Severity,
    SourceDocument,
    collection_paused,
    read_documents,
)

# request keys (as written) → RequestFields attribute
REQUEST_KEYS = {
    "to": "to",
    "port": "port",
    "from": "from_id",
    "fromWorkload": "from_workload",
    "sourceIp": "source_ip",
    "method": "method",
    "path": "path",
    "host": "host",
    "headers": "headers",
    "jwtClaims": "jwt_claims",
}
KEY_OF = {attr: key for key, attr in REQUEST_KEYS.items()}
EXPECT_KEYS = ("decision", "policy", "rule")
CASE_KEYS = ("name", "request", "expect")


@dataclass(frozen=True, slots=True)
class Expectation:
    decision: str
    policy: str | None = None
    rule: int | None = None
    rule_given: bool = False

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"decision": self.decision}
        if self.policy is not None:
            found["policy"] = self.policy
        if self.rule_given:
            found["rule"] = self.rule
        return found


@dataclass(frozen=True, slots=True)
class TestCase:
    """One case: what to ask, what must come back, and where it was written."""

    __test__ = False  # not a pytest class

    name: str
    fields: RequestFields
    expect: Expectation
    location: Location
    source: SourceDocument
    path: tuple[str | int, ...]

    def at(self, *keys: str) -> Location:
        return self.source.value_at((*self.path, *keys))


def is_test_file(file: str) -> bool:
    """A YAML file whose first document is a mapping with a top-level `tests` key."""
    try:
        with open(file, encoding="utf-8") as stream:
            head = stream.read(65536)
    except (OSError, UnicodeDecodeError):
        return False
    return any(
        line.rstrip() == "tests:" or line.startswith("tests: ")
        for line in head.splitlines()
        if not line.startswith((" ", "#", "-"))
    )


def read_cases(file: str) -> tuple[list[TestCase], list[Diagnostic]]:
    """The cases of one test file, and the problems that make any of them unusable."""
    with collection_paused():  # no collector walks over the cases while they are built
        return _read_cases(file)


def _read_cases(file: str) -> tuple[list[TestCase], list[Diagnostic]]:
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [_error(Location(file), f"cannot read test file: {exc}")]
    documents, problems = read_documents(file, text)
    cases: list[TestCase] = []
    for doc in documents:
        if not isinstance(doc.data, dict) or not isinstance(doc.data.get("tests"), list):
            problems.append(_error(doc.start, "a test file is a mapping with a 'tests' list"))
            continue
        for i, raw in enumerate(doc.data["tests"]):
            case, found = _case(doc, ("tests", i), raw)
            problems.extend(found)
            if case is not None:
                cases.append(case)
    return cases, problems


def _case(
    doc: SourceDocument, path: tuple[str | int, ...], raw: Any
) -> tuple[TestCase | None, list[Diagnostic]]:
    where = doc.value_at(path)
    if not isinstance(raw, dict):
        return None, [_error(where, "a test case is a mapping with name, request and expect")]
    problems = _unknown(doc, path, raw, CASE_KEYS)
    for key in CASE_KEYS:
        if key not in raw:
            problems.append(_error(where, f"test case: missing required field {key!r}"))
    if problems:
        return None, problems
    name = raw["name"]
    if not isinstance(name, str) or not name:
        problems.append(_error(doc.value_at((*path, "name")), "name: expected a string"))
    fields = _request(doc, (*path, "request"), raw["request"], problems)
    expect = _expect(doc, (*path, "expect"), raw["expect"], problems)
    if problems or fields is None or expect is None:
        return None, problems
    return TestCase(name, fields, expect, where, doc, path), []


def _request(
    doc: SourceDocument, path: tuple[str | int, ...], raw: Any, problems: list[Diagnostic]
) -> RequestFields | None:
    if not isinstance(raw, dict):
        problems.append(_error(doc.value_at(path), "request: expected a mapping"))
        return None
    found = _unknown(doc, path, raw, tuple(REQUEST_KEYS))
    for key in ("to", "port"):
        if key not in raw:
            found.append(_error(doc.value_at(path), f"request: missing required field {key!r}"))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in REQUEST_KEYS:
            continue
        want = _REQUEST_TYPES[key]
        if not _typed(value, want):
            where = doc.value_at((*path, key))
            found.append(_error(where, f"request.{key}: expected {want}, got {value!r}"))
        values[REQUEST_KEYS[key]] = value
    problems.extend(found)
    if found:
        return None
    headers = {str(k): str(v) for k, v in (values.pop("headers", None) or {}).items()}
    return RequestFields(headers=headers, **values)


_REQUEST_TYPES = {key: "a string" for key in REQUEST_KEYS} | {
    "port": "a port number",
    "headers": "a mapping",
    "jwtClaims": "a mapping with 'iss'",
}


def _typed(value: Any, want: str) -> bool:
    if want == "a port number":
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
    if want == "a mapping":
        return isinstance(value, dict)
    if want.startswith("a mapping with"):
        return isinstance(value, dict) and "iss" in value
    return isinstance(value, str) and bool(value)


def _expect(
    doc: SourceDocument, path: tuple[str | int, ...], raw: Any, problems: list[Diagnostic]
) -> Expectation | None:
    if not isinstance(raw, dict):
        problems.append(_error(doc.value_at(path), "expect: expected a mapping"))
        return None
    found = _unknown(doc, path, raw, EXPECT_KEYS)
    decision = raw.get("decision")
    if decision not in ("ALLOW", "DENY"):
        where = doc.value_at((*path, "decision"))
        found.append(_error(where, f"expect.decision: expected ALLOW or DENY, got {decision!r}"))
    policy = raw.get("policy")
    if policy is not None and not isinstance(policy, str):
        found.append(_error(doc.value_at((*path, "policy")), "expect.policy: expected a string"))
    rule = raw.get("rule")
    if rule is not None and (not isinstance(rule, int) or isinstance(rule, bool) or rule < 0):
        found.append(_error(doc.value_at((*path, "rule")), "expect.rule: expected an index"))
    problems.extend(found)
    if found:
        return None
    return Expectation(str(decision), policy, rule, "rule" in raw)


def _unknown(
    doc: SourceDocument, path: tuple[str | int, ...], raw: dict[str, Any], known: tuple[str, ...]
) -> list[Diagnostic]:
    return [
        _error(doc.key_at((*path, key)), f"unknown field {key!r} (known: {', '.join(known)})")
        for key in raw
        if key not in known
    ]


def _error(location: Location, message: str) -> Diagnostic:
    return Diagnostic(location, Severity.ERROR, message)
