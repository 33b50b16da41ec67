"""What a sidecar decided, read back from what Envoy records about a request.

One mapping, used by the flow log (access-log entries) and mirrored by the Lua script that tags
Envoy's spans (`xds/_tracing.py`); a test holds the two to the same answers.

Native RBAC mode: the RBAC filters write `<prefix>enforced_engine_result` /
`<prefix>enforced_effective_policy_id` (and `shadow_*` for dry-run) into the dynamic metadata
namespace `envoy.filters.http.rbac` (`envoy.filters.network.rbac` on tcp ports, shadow keys only).
Every filter has an explicit on-no-match action, so an implicit deny is named `default:deny`
and an implicit allow `default:allow` — never "none".

ext_authz mode: the engine answers with dynamic metadata under `envoy.filters.http.ext_authz`
carrying the same fields as `Verdict.to_metadata()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshwarden.engine import (
    Action,
    AuthorizationPlan,
    Cause,
    Decision,
    Effect,
    EgressPlan,
    Outcome,
    dry_run_verdict,
)

RBAC_NS = "envoy.filters.http.rbac"
NETWORK_RBAC_NS = "envoy.filters.network.rbac"
EXT_AUTHZ_NS = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ_NS = "envoy.filters.network.ext_authz"

# rules_stat_prefix / shadow_rules_stat_prefix of each stage, where the translator sets them
# (xds/_translate.py, xds/_rbac.py) and where the readers find them in Envoy's metadata
DENY_PREFIX = "authz_deny_"
ALLOW_PREFIX = "authz_allow_"
AUDIT_PREFIX = "authz_audit_"
RULES_STAT_PREFIX = {"audit": AUDIT_PREFIX, "deny": DENY_PREFIX, "allow": ALLOW_PREFIX}
DRY_DENY_PREFIX = "dryrun_deny_"
DRY_ALLOW_PREFIX = "dryrun_allow_"

# the RBAC stages' on-no-match action names (a cause the flow log never shows as a decider)
NO_DENY = "allow:no-deny-rule"  # the DENY stage's on-no-match action
NO_AUDIT = "audit:none"
DRY_NO_DENY = "dry-run:no-deny"
DRY_DEFAULT_DENY = "dry-run:default-deny"


@dataclass(frozen=True, slots=True)
class Verdict:
    """`decision` allow/deny; `policy` `ns/name` or a default cause; `rule` the rule index or
    None; the dry-run pair is None where no dry-run policy applies."""

    decision: Effect
    policy: str
    rule: int | None = None
    dry_run_decision: Effect | None = None
    dry_run_policy: str | None = None

    def to_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": str(self.decision), "policy": self.policy}
        if self.rule is not None:
            out["rule"] = self.rule
        if self.dry_run_decision is not None:
            out["dry_run_decision"] = str(self.dry_run_decision)
            out["dry_run_policy"] = self.dry_run_policy
        return out

    @classmethod
    def from_metadata(cls, fields: Mapping[str, Any]) -> Verdict:
        rule, dry_decision = fields.get("rule"), fields.get("dry_run_decision")
        return cls(
            decision=_effect(fields.get("decision")),
            policy=str(fields.get("policy", Cause.DEFAULT_DENY)),
            rule=int(rule) if rule is not None else None,
            dry_run_decision=None if dry_decision is None else _effect(dry_decision),
            dry_run_policy=fields.get("dry_run_policy"),
        )


def verdict_of(plan: AuthorizationPlan | EgressPlan, decision: Decision) -> Verdict:
    """The engine's decision as a Verdict, with the dry-run verdict when the plan has dry-run
    policies (ingress or egress)."""
    matched = [o for o in decision.dry_run if o.rule is not None]
    dry = dry_run_verdict(matched, {p.action for p in plan.dry_run}) if plan.dry_run else None
    dry_decision, dry_policy = dry if dry is not None else (None, None)
    return Verdict(decision.effect, decision.policy, decision.rule, dry_decision, dry_policy)


def _effect(value: Any) -> Effect:
    """A reported decision; anything but `allow` reads as deny (fail closed)."""
    return Effect.ALLOW if value == Effect.ALLOW else Effect.DENY


def split_action(name: str) -> tuple[str, int | None]:
    """`ns/name#3` → (`ns/name`, 3); a default cause → (cause, None)."""
    policy, sep, index = name.rpartition("#")
    if sep and index.isdigit():
        return policy, int(index)
    return name, None


def _stage(rbac: Mapping[str, Any], prefix: str, kind: str) -> tuple[str, str] | None:
    result = rbac.get(f"{prefix}{kind}_engine_result")
    if result is None:
        return None
    return str(result), str(rbac.get(f"{prefix}{kind}_effective_policy_id", ""))


def _dry_run(rbac: Mapping[str, Any]) -> tuple[Effect | None, str | None]:
    """The shadow stages read as the engine's dry-run outcomes, decided by the same function."""
    actions: set[Action] = set()
    matched: list[Outcome] = []
    for action, prefix, hit in (
        (Action.DENY, DRY_DENY_PREFIX, "denied"),
        (Action.ALLOW, DRY_ALLOW_PREFIX, "allowed"),
    ):
        stage = _stage(rbac, prefix, "shadow")
        if stage is not None:
            actions.add(action)
            if stage[0] == hit:
                policy, rule = split_action(stage[1])
                matched.append(Outcome(policy, action, rule))
    verdict = dry_run_verdict(matched, actions)
    return verdict if verdict is not None else (None, None)


def verdict_from_envoy(
    metadata: Mapping[str, Mapping[str, Any]], response_code: int | None = None
) -> Verdict:
    """The verdict behind one HTTP request, from its dynamic metadata (namespace → fields).

    No authorization metadata at all means no authorization filter decided: a token was
    rejected before the policies (`jwt:invalid`, 401), or in ext_authz mode the engine did not
    answer (`authz:unavailable`)."""
    ext = metadata.get(EXT_AUTHZ_NS)
    if ext and "decision" in ext:
        return Verdict.from_metadata(ext)
    rbac = metadata.get(RBAC_NS) or {}
    dry_decision, dry_policy = _dry_run(rbac)
    deny = _stage(rbac, DENY_PREFIX, "enforced")
    if deny is not None and deny[0] == "denied":
        policy, rule = split_action(deny[1])
        return Verdict(Effect.DENY, policy, rule, dry_decision, dry_policy)
    allow = _stage(rbac, ALLOW_PREFIX, "enforced")
    if allow is not None:
        policy, rule = split_action(allow[1] or Cause.DEFAULT_DENY)
        decision = Effect.of(allow[0] == "allowed")
        return Verdict(decision, policy, rule, dry_decision, dry_policy)
    if deny is not None:  # only a DENY stage ran and it let the request through
        return Verdict(Effect.ALLOW, Cause.DEFAULT_ALLOW, None, dry_decision, dry_policy)
    if response_code == 401 or response_code is None:
        return Verdict(Effect.DENY, Cause.JWT_INVALID)
    # ext_authz mode with the engine unreachable: fail closed (403) or, if configured, open
    return Verdict(Effect.of(response_code != 403), Cause.AUTHZ_UNAVAILABLE)
