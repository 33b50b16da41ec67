"""What one dry-run or audit policy made of a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one (dry-run or audit) policy made of the request."""

    policy: str
    decision: str
    rule: int | None

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "decision": self.decision, "rule": self.rule}
