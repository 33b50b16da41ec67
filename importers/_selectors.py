"""Kubernetes label selectors (matchLabels AND matchExpressions), read with positions, matched
against the inventory's labels and written back in the policy language's spelling."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meshwarden.importers._fields import Fields

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...]

    def holds(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        inside = present and labels[self.key] in self.values
        return inside if self.operator == "In" else not inside


@dataclass(frozen=True, slots=True)
class Selector:
    """A label selector; the empty selector selects everything."""

    labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.labels and not self.expressions

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels) and all(
            r.holds(labels) for r in self.expressions
        )

    def narrowed(self, key: str, values: Iterable[str]) -> Selector:
        """This selector AND `key` In `values`."""
        requirement = Requirement(key, "In", tuple(sorted(values)))
        return Selector(self.labels, (*self.expressions, requirement))

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.labels:
            out["matchLabels"] = dict(self.labels)
        if self.expressions:
            out["matchExpressions"] = [_requirement_yaml(r) for r in self.expressions]
        return out


def _requirement_yaml(req: Requirement) -> dict[str, Any]:
    out: dict[str, Any] = {"key": req.key, "operator": req.operator}
    if req.values:
        out["values"] = list(req.values)
    return out


def read_selector(fields: Fields, *path: str | int) -> Selector | None:
    """The selector at `path`; None when it is absent or wrong (the problem is recorded)."""
    if fields.mapping(*path) is None:
        return None
    fields.known(path, ("matchLabels", "matchExpressions"))
    labels = fields.mapping(*path, "matchLabels") or {}
    pairs = []
    for key, value in labels.items():
        if not isinstance(value, str):
            fields.fail((*path, "matchLabels", key), f"label {key!r} must have a string value")
            return None
        pairs.append((str(key), value))
    expressions = []
    for i, _ in enumerate(fields.sequence(*path, "matchExpressions") or []):
        requirement = _requirement(fields, (*path, "matchExpressions", i))
        if requirement is None:
            return None
        expressions.append(requirement)
    return Selector(tuple(pairs), tuple(expressions))


def _requirement(fields: Fields, path: tuple[str | int, ...]) -> Requirement | None:
    if fields.mapping(*path) is None:
        return None
    fields.known(path, ("key", "operator", "values"))
    key = fields.string(*path, "key")
    operator = fields.string(*path, "operator")
    values = fields.sequence(*path, "values") or []
    if key is None or operator not in _OPERATORS:
        fields.fail(path, f"a requirement needs a key and an operator ({', '.join(_OPERATORS)})")
        return None
    if not all(isinstance(v, str) for v in values):
        fields.fail((*path, "values"), "values must be strings")
        return None
    if (operator in ("In", "NotIn")) != bool(values):
        needs = "needs values" if operator in ("In", "NotIn") else "takes no values"
        fields.fail((*path, "operator"), f"operator {operator} {needs}")
        return None
    return Requirement(key, operator, tuple(values))
