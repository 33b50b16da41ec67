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

RBAC_NS = "envoy.filters.http.rbac"
NETWORK_RBAC_NS = "envoy.filters.network.rbac"
EXT_AUTHZ_NS = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ_NS = "envoy.filters.network.ext_authz"

# rules_stat_prefix / shadow_rules_stat_prefix of each stage (xds/_translate.py, xds/_rbac.py)
DENY_PREFIX = "authz_deny_"
ALLOW_PREFIX = "authz_allow_"
AUDIT_PREFIX = "authz_audit_"
DRY_DENY_PREFIX = "dryrun_deny_"
DRY_ALLOW_PREFIX = "dryrun_allow_"

DEFAULT_ALLOW = "default:allow"
DEFAULT_DENY = "default:deny"
JWT_INVALID = "jwt:invalid"
AUTHZ_UNAVAILABLE = "authz:unavailable"  # ext_authz mode, the engine did not answer
NO_DENY = "allow:no-deny-rule"  # the DENY stage's on-no-match action
NO_AUDIT = "audit:none"
DRY_NO_DENY = "dry-run:no-deny"
DRY_DEFAULT_DENY = "dry-run:default-deny"


@dataclass(frozen=True, slots=True)
class Verdict:
    """`decision` allow/deny; `policy` `ns/name` or a default cause; `rule` the rule index or
    None; the dry-run pair is None where no dry-run policy applies."""

    decision: str
    policy: str
    rule: int | None = None
    dry_run_decision: str | None = None
    dry_run_policy: str | None = None

    def to_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": self.decision, "policy": self.policy}
        if self.rule is not None:
            out["rule"] = self.rule
        if self.dry_run_decision is not None:
            out["dry_run_decision"] = self.dry_run_decision
            out["dry_run_policy"] = self.dry_run_policy
        return out

    @classmethod
    def from_metadata(cls, fields: Mapping[str, Any]) -> Verdict:
        rule = fields.get("rule")
        return cls(
            decision=str(fields.get("decision", "deny")),
            policy=str(fields.get("policy", DEFAULT_DENY)),
            rule=int(rule) if rule is not None else None,
            dry_run_decision=fields.get("dry_run_decision"),
            dry_run_policy=fields.get("dry_run_policy"),
        )


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


def _dry_run(rbac: Mapping[str, Any]) -> tuple[str | None, str | None]:
    deny = _stage(rbac, DRY_DENY_PREFIX, "shadow")
    if deny is not None and deny[0] == "denied":
        return "deny", split_action(deny[1])[0]
    allow = _stage(rbac, DRY_ALLOW_PREFIX, "shadow")
    if allow is not None:
        if allow[0] == "allowed":
            return "allow", split_action(allow[1])[0]
        return "deny", DEFAULT_DENY
    if deny is not None:
        return "allow", DEFAULT_ALLOW
    return None, None


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
        return Verdict("deny", policy, rule, dry_decision, dry_policy)
    allow = _stage(rbac, ALLOW_PREFIX, "enforced")
    if allow is not None:
        policy, rule = split_action(allow[1] or DEFAULT_DENY)
        decision = "allow" if allow[0] == "allowed" else "deny"
        return Verdict(decision, policy, rule, dry_decision, dry_policy)
    if deny is not None:  # only a DENY stage ran and it let the request through
        return Verdict("allow", DEFAULT_ALLOW, None, dry_decision, dry_policy)
    if response_code == 401 or response_code is None:
        return Verdict("deny", JWT_INVALID)
    # ext_authz mode with the engine unreachable: fail closed (403) or, if configured, open
    return Verdict("deny" if response_code == 403 else "allow", AUTHZ_UNAVAILABLE)
