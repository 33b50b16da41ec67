"""What one dry-run or audit policy made of a request, and the dry-run verdict they add up to."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from meshwarden.engine._vocabulary import Action, Cause, Effect


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one (dry-run or audit) policy made of the request."""

    policy: str
    decision: Action
    rule: int | None

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "decision": self.decision, "rule": self.rule}


def dry_run_verdict(
    matched: Iterable[Outcome], actions: Collection[Action]
) -> tuple[Effect, str] | None:
    """What the dry-run policies would have made of a request, given the outcomes of those
    whose rules `matched` and the actions of all dry-run policies present: a matching DENY,
    else a matching ALLOW, else the default (deny when an ALLOW policy is present, allow when
    only DENY policies are). None without dry-run ALLOW or DENY policies. The evaluator's
    outcomes and Envoy's shadow rules are both read through this one function."""
    matched = tuple(matched)
    for wanted in (Action.DENY, Action.ALLOW):
        for outcome in matched:
            if outcome.decision == wanted:
                return Effect.of(wanted is Action.ALLOW), outcome.policy
    if Action.ALLOW in actions:
        return Effect.DENY, Cause.DEFAULT_DENY
    if Action.DENY in actions:
        return Effect.ALLOW, Cause.DEFAULT_ALLOW
    return None
