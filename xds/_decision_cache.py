"""ext_authz: each workload's recent decisions, keyed on exactly what a decision depends on.

A sidecar asks the same question again and again (the same caller, method and path); the
engine's answer to a Check depends only on the plan, the port and the request's attributes the
plan can read: the caller's identity and address, the method, path and host, the headers some
`when` condition names, and the verified token's claims. Those are the key — the other headers
(request ids, trace context, user agents) are not, so repeats hit. Building the engine's Request
(address parsing, path normalisation) and deciding are skipped on a hit.

One table per workload, dropped when that workload's plan is replaced (a reload compiles new
plans, so no answer outlives the policies that gave it); at most `capacity` answers in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshwarden.engine import AuthorizationPlan
from meshwarden.xds._check import CheckAttributes
from meshwarden.xds._decisions import Verdict
from meshwarden.xds._ext_authz_filter import condition_headers

DecisionKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Decided:
    """A remembered answer: the verdict, and the caller's SPIFFE ID as the engine spells it
    (for the decision span)."""

    verdict: Verdict
    identity: str | None


@dataclass(slots=True)
class _Table:
    plan: AuthorizationPlan
    headers: tuple[str, ...]
    answers: dict[DecisionKey, Decided]


class DecisionCache:
    """Remembered answers per workload (see the module docstring); `hits`/`misses` count."""

    def __init__(self, capacity: int = 16_384) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._tables: dict[str, _Table] = {}
        self._size = 0

    def key(self, plan: AuthorizationPlan, port: int, check: CheckAttributes) -> DecisionKey:
        headers = self._table(plan).headers
        named = tuple(check.headers.get(name) for name in headers) if headers else ()
        return (
            port,
            check.principal,
            check.source_ip,
            check.http,
            check.method,
            check.path,
            check.host,
            named,
            check.jwt_raw,
        )

    def get(self, plan: AuthorizationPlan, key: DecisionKey) -> Decided | None:
        found = self._table(plan).answers.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, plan: AuthorizationPlan, key: DecisionKey, decided: Decided) -> None:
        if self._size >= self.capacity:
            self._tables.clear()
            self._size = 0
        answers = self._table(plan).answers
        if key not in answers:
            self._size += 1
        answers[key] = decided

    def _table(self, plan: AuthorizationPlan) -> _Table:
        ref = plan.workload.ref
        table = self._tables.get(ref)
        if table is None or table.plan is not plan:
            if table is not None:
                self._size -= len(table.answers)
            table = _Table(plan, condition_headers(plan), {})
            self._tables[ref] = table
        return table
