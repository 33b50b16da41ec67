"""Deciding a request on an AuthorizationPlan: the spec's semantics 1–9, with explanations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshwarden.engine._documents import Document
from meshwarden.engine._model import JwtIssuerSpec
from meshwarden.engine._modes import monitor_reason
from meshwarden.engine._outcome import Outcome
from meshwarden.engine._plan import AuthorizationPlan, CompiledPolicy
from meshwarden.engine._request import Request, claim_strings
from meshwarden.engine._rules import CompiledRule
from meshwarden.engine._vocabulary import Action, Cause, Effect, Mode


@dataclass(frozen=True, slots=True)
class PolicyTrace:
    """Why one policy did or did not match: one reason per rule (None = matched)."""

    policy: str
    action: Action
    mode: Mode
    matched_rule: int | None
    rule_reasons: tuple[str | None, ...]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "action": self.action,
            "mode": self.mode,
            "matched": self.matched_rule is not None,
            "rule": self.matched_rule,
            "rules": [
                {"index": i, "matched": r is None, "reason": r}
                for i, r in enumerate(self.rule_reasons)
            ],
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict and its cause: a policy and rule, or a default/authentication cause."""

    allowed: bool
    policy: str
    rule: int | None
    reason: str
    dry_run: tuple[Outcome, ...] = ()
    audit: tuple[Outcome, ...] = ()
    trace: tuple[PolicyTrace, ...] = field(default=())

    @property
    def verdict(self) -> Action:
        return Action.ALLOW if self.allowed else Action.DENY

    @property
    def effect(self) -> Effect:
        return Effect.of(self.allowed)

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": self.verdict,
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason,
            "dryRun": [o.to_json() for o in self.dry_run],
            "audit": [{"policy": o.policy, "rule": o.rule} for o in self.audit],
            "trace": [t.to_json() for t in self.trace],
        }


def decide(plan: AuthorizationPlan, req: Request, *, explain: bool = False) -> Decision:
    """Decide `req` on `plan`. With `explain`, every policy selecting the workload is traced."""
    trace = tuple(_trace(p, req) for p in plan.policies) if explain else ()
    refusal = _authenticate(plan, req)
    if refusal is not None:
        return Decision(False, refusal[0], None, refusal[1], trace=trace)
    dry_run = _dry_runs(plan, req) if plan.dry_run else ()
    audit = tuple(
        Outcome(rule.policy, Action.AUDIT, rule.index)
        for rule in _first_per_policy(plan.audit.candidates(req), req).values()
    )
    denied = plan.deny.first_match(req)
    if denied is not None:
        reason = f"DENY rule {denied.name} matched"
        return Decision(False, denied.policy, denied.index, reason, dry_run, audit, trace)
    if plan.has_allow:
        allowed = plan.allow.first_match(req)
        if allowed is not None:
            reason = f"ALLOW rule {allowed.name} matched"
            return Decision(True, allowed.policy, allowed.index, reason, dry_run, audit, trace)
        reason = "ALLOW policies select this workload but none of their rules matched"
        return Decision(False, Cause.DEFAULT_DENY, None, reason, dry_run, audit, trace)
    if Effect(plan.mesh.default_policy) is Effect.DENY:
        reason = "no ALLOW policy selects this workload; Mesh defaultPolicy is deny"
        return Decision(False, Cause.DEFAULT_DENY, None, reason, dry_run, audit, trace)
    reason = monitor_reason(plan.mesh, plan.workload.namespace) or (
        "no ALLOW policy selects this workload; Mesh defaultPolicy is allow"
    )
    return Decision(True, Cause.DEFAULT_ALLOW, None, reason, dry_run, audit, trace)


def _authenticate(plan: AuthorizationPlan, req: Request) -> tuple[Cause, str] | None:
    """Semantics 1: (cause, reason) when the request is refused before any policy runs."""
    if req.identity is None:
        mtls = plan.mtls(req.port)
        if mtls.strict:
            where = "" if mtls.origin == "Mesh" else f" ({mtls.origin})"
            return (
                Cause.MTLS_REQUIRED,
                f"mTLS is STRICT{where} and the peer presented no client certificate",
            )
    if req.jwt_claims is not None:
        problem = token_problem(plan.jwt_issuers, req.jwt_claims)
        if problem is not None:
            return Cause.JWT_INVALID, problem
    return None


def token_problem(
    issuers: tuple[Document[JwtIssuerSpec], ...], claims: Mapping[str, Any]
) -> str | None:
    """Why a token with these (signature-verified) claims is rejected (401), or None.

    A token belongs to a JwtIssuer whose `issuer` equals its `iss`, or — for a JwtIssuer with
    `spiffeTrustDomain` — when it is a JWT-SVID of that trust domain (`sub` is a SPIFFE ID
    there; JWT-SVIDs carry no `iss`)."""
    iss, sub = claims.get("iss"), claims.get("sub")
    candidates = [d for d in issuers if d.spec.issuer == iss or _svid_of(d.spec, sub)]
    if not candidates:
        known = ", ".join(sorted({d.spec.issuer for d in issuers})) or "none"
        return f"token issuer {iss!r} is not configured for this workload (JwtIssuers: {known})"
    audiences = set(claim_strings(claims.get("aud"))) if claims.get("aud") is not None else set()
    for doc in candidates:
        if not doc.spec.audiences or audiences & set(doc.spec.audiences):
            return None
    wanted = sorted({a for d in candidates for a in d.spec.audiences})
    return f"token audience {sorted(audiences)} matches none of {wanted}"


def _svid_of(spec: JwtIssuerSpec, sub: Any) -> bool:
    domain = spec.spiffe_trust_domain
    return bool(domain) and isinstance(sub, str) and sub.startswith(f"spiffe://{domain}/")


def _first_per_policy(rules: tuple[CompiledRule, ...], req: Request) -> dict[str, CompiledRule]:
    """The first matching rule of each policy, in policy order (rules come in that order)."""
    first: dict[str, CompiledRule] = {}
    for rule in rules:
        if rule.policy not in first and rule.matches(req):
            first[rule.policy] = rule
    return first


def _dry_runs(plan: AuthorizationPlan, req: Request) -> tuple[Outcome, ...]:
    matched = _first_per_policy(plan.dry_run_index.candidates(req), req)
    if not matched:
        return plan.dry_run_unmatched
    outcomes = []
    for policy in plan.dry_run:
        rule = matched.get(policy.ref)
        index = rule.index if rule else None
        if policy.action == Action.ALLOW:
            outcomes.append(Outcome(policy.ref, Action.ALLOW if rule else Action.DENY, index))
        elif policy.action == Action.DENY:
            outcomes.append(Outcome(policy.ref, Action.DENY if rule else Action.ALLOW, index))
        elif rule is not None:
            outcomes.append(Outcome(policy.ref, Action.AUDIT, index))
    return tuple(outcomes)


def _trace(policy: CompiledPolicy, req: Request) -> PolicyTrace:
    reasons = tuple(rule.mismatch(req) for rule in policy.rules)
    matched = next((i for i, r in enumerate(reasons) if r is None), None)
    note = "" if policy.rules else "no rules: matches nothing"
    return PolicyTrace(policy.ref, policy.action, policy.mode, matched, reasons, note)
