"""`lint`: findings with stable codes on a valid mesh — slips `check` lets through.

MW1xx are errors in waiting (the policy will not do what it says), MW2xx are risky choices,
MW3xx are hygiene. Every finding has a place (FILE:LINE:COL), a one-line fix and a docs anchor
(docs/lint.md#mw101). A document suppresses codes for itself with the annotation
`meshwarden.io/lint-ignore: "MW203, MW301"`.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from meshwarden.engine._collection import collection_paused
from meshwarden.engine._compiler import CompiledMesh
from meshwarden.engine._diagnostics import Diagnostic, Location

IGNORE_ANNOTATION = "meshwarden.io/lint-ignore"
DRY_RUN_SINCE_ANNOTATION = "meshwarden.io/dry-run-since"


class LintSeverity(StrEnum):
    """How bad a lint finding is: error (MW1xx), warning (MW2xx), info (MW3xx)."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 3, "warning": 2, "info": 1}[self.value]


# code → (severity, title); the title is the heading of the code in docs/lint.md
LINT_CODES: dict[str, tuple[LintSeverity, str]] = {
    "MW100": (LintSeverity.ERROR, "invalid policy input"),
    "MW101": (LintSeverity.ERROR, "rule split in two by a stray '- '"),
    "MW102": (LintSeverity.ERROR, "namespace with no workload"),
    "MW103": (LintSeverity.ERROR, "identity of no workload"),
    "MW104": (LintSeverity.ERROR, "identity in a foreign trust domain"),
    "MW105": (LintSeverity.ERROR, "JWT issuer no JwtIssuer configures"),
    "MW106": (LintSeverity.ERROR, "ALLOW rule denied first by a DENY rule"),
    "MW107": (LintSeverity.ERROR, "two upstreams on one localPort"),
    "MW201": (LintSeverity.WARNING, "ALLOW rule open to unauthenticated peers"),
    "MW202": (LintSeverity.WARNING, "ALLOW rule open to any identity"),
    "MW203": (LintSeverity.WARNING, "PERMISSIVE mTLS"),
    "MW204": (LintSeverity.WARNING, "JwtIssuer without audiences"),
    "MW301": (LintSeverity.INFO, "selects no workload"),
    "MW302": (LintSeverity.INFO, "rule never hit in the flow window"),
    "MW303": (LintSeverity.INFO, "dry-run for too long"),
    "MW304": (LintSeverity.INFO, "rule redundant with an earlier rule"),
}


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """One lint finding: a stable code at a place, what is wrong and a one-line fix."""

    location: Location
    code: str
    message: str
    fix: str

    @property
    def severity(self) -> LintSeverity:
        return LINT_CODES[self.code][0]

    @property
    def docs(self) -> str:
        return f"docs/lint.md#{self.code.lower()}"

    def __str__(self) -> str:
        return (
            f"{self.location}: {self.severity.value}: {self.code} {self.message}\n"
            f"    fix: {self.fix}  ({self.docs})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "message": self.message,
            "fix": self.fix,
            "docs": self.docs,
        }


@dataclass(frozen=True, slots=True)
class FlowWindow:
    """What the flow log saw: (policy, rule) pairs that decided a request; enforced rules absent
    from it were never hit. Dry-run policies that gave an outcome count as hit."""

    hits: frozenset[tuple[str, int | None]] = field(default_factory=frozenset)
    dry_run_seen: frozenset[str] = field(default_factory=frozenset)
    records: int = 0

    @classmethod
    def of(cls, flows: Iterable[dict[str, Any]]) -> FlowWindow:
        hits: set[tuple[str, int | None]] = set()
        dry: set[str] = set()
        count = 0
        for flow in flows:
            count += 1
            hits.add((str(flow.get("policy")), flow.get("rule")))
            if flow.get("dryRun"):
                dry.add(str(flow["dryRun"].get("policy")))
        return cls(frozenset(hits), frozenset(dry), count)


@dataclass(frozen=True, slots=True)
class LintOptions:
    """What lint may know beyond the policies: a flow window, today, the dry-run age limit."""

    flows: FlowWindow | None = None
    today: dt.date | None = None
    dry_run_max_days: int = 14


def invalid_input(diagnostics: Iterable[Diagnostic]) -> list[Finding]:
    """`check` errors as MW100 findings, so a broken file shows in the same report."""
    return [
        Finding(d.location, "MW100", d.message, "run `meshwarden check` and fix the error")
        for d in diagnostics
        if d.severity.value == "error"
    ]


def lint(mesh: CompiledMesh, options: LintOptions | None = None) -> list[Finding]:
    """Every finding on a compiled (valid) mesh, sorted by place, minus suppressed codes."""
    from meshwarden.engine import _lint_checks as checks

    options = options or LintOptions()
    found: list[Finding] = []
    with collection_paused():
        for check in checks.CHECKS:
            found.extend(check(mesh, options))
        ignored = _ignored(mesh)
        return sorted(f for f in found if f.code not in _ignored_at(ignored, f.location))


Starts = tuple[list[int], list[frozenset[str]]]


def _ignored(mesh: CompiledMesh) -> dict[str, Starts]:
    """file → the start lines of its documents (sorted) and the codes each one ignores."""
    per_file: dict[str, list[tuple[int, frozenset[str]]]] = {}
    for doc in mesh.documents.values():
        text = doc.metadata.annotations.get(IGNORE_ANNOTATION, "")
        codes = frozenset(c.strip().upper() for c in text.replace(",", " ").split())
        per_file.setdefault(doc.source.file, []).append((doc.source.start.line, codes))
    return {
        file: ([line for line, _ in entries], [codes for _, codes in entries])
        for file, entries in ((f, sorted(e, key=lambda x: x[0])) for f, e in per_file.items())
    }


def _ignored_at(ignored: dict[str, Starts], location: Location) -> frozenset[str]:
    """The codes the document containing `location` ignores."""
    if location.file not in ignored:
        return frozenset()
    starts, codes = ignored[location.file]
    n = bisect.bisect_right(starts, location.line) - 1
    return codes[n] if n >= 0 else frozenset()
