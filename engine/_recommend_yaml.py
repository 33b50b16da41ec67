"""A Recommendation as a commented YAML policy file (written by hand: comments survive, and
every string is quoted as JSON, which YAML reads back unchanged)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshwarden.engine._recommend import Recommendation, RecommendedRule

DRY_RUN_SINCE = "meshwarden.io/dry-run-since"


def _q(value: str | int) -> str:
    return str(value) if isinstance(value, int) else json.dumps(value)


def _flow_list(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def render(rec: Recommendation, today: str) -> str:
    count = sum(r.seen.count for r in rec.rules)
    first = min(r.seen.first for r in rec.rules)
    last = max(r.seen.last for r in rec.rules)
    labels = ", ".join(f"{_q(k)}: {_q(v)}" for k, v in sorted(rec.labels.items()))
    lines = [
        f"# Recommended by `meshwarden recommend` from {count} allowed flow(s) to "
        f"{', '.join(rec.workloads)}",
        f"# seen {first} .. {last}.",
        "# Written as dry-run: check `meshwarden flows` for would-deny, then",
        f"# `meshwarden promote {rec.ref} PATH --require-clean 24h --server URL`.",
        *[f"# note: {note}" for note in rec.notes],
        "apiVersion: meshwarden.io/v1alpha1",
        "kind: AuthorizationPolicy",
        "metadata:",
        f"  name: {rec.name}",
        f"  namespace: {rec.namespace}",
        f"  annotations: {{{_q(DRY_RUN_SINCE)}: {_q(today)}}}",
        "spec:",
        f"  selector: {{matchLabels: {{{labels}}}}}",
        "  action: ALLOW",
        "  mode: dry-run",
        "  rules:",
    ]
    for rule in rec.rules:
        lines.extend(_rule(rule))
    return "\n".join(lines) + "\n"


def _rule(rule: RecommendedRule) -> list[str]:
    seen = rule.seen
    lines = [f"  # {seen.count} flow(s), first {seen.first}, last {seen.last}"]
    lines += [f"  # {note}" for note in rule.notes]
    sources = []
    for kind, values in (
        ("identities", "identity"),
        ("namespaces", "namespace"),
        ("ipBlocks", "ip"),
    ):
        found = [
            v if values != "ip" else f"{v}/32" if ":" not in v else f"{v}/128"
            for k, v in rule.callers
            if k == values
        ]
        if found:
            sources.append(f"{{{kind}: {_flow_list(found)}}}")
    lines.append(f"  - from: [{', '.join(sources)}]")
    if not rule.http or not rule.operations:
        lines.append(f"    to: [{{ports: [{rule.port}]}}]")
        return lines
    lines.append("    to:")
    for methods, paths in rule.operations:
        lines.append(
            f"    - {{ports: [{rule.port}], methods: {_flow_list(methods)}, "
            f"paths: {_flow_list(paths)}}}"
        )
    return lines
