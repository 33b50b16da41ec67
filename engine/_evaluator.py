"""Deciding a request on an AuthorizationPlan: the spec's semantics 1–9, with explanations."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshwarden.engine._documents import Document
from meshwarden.engine._egress import EgressPlan, EgressPolicy
from meshwarden.engine._egress_rules import Flow
from meshwarden.engine._model import JwtIssuerSpec, MeshSpec
from meshwarden.engine._modes import monitor_reason
from meshwarden.engine._outcome import Outcome
from meshwarden.engine._plan import AuthorizationPlan, CompiledPolicy
from meshwarden.engine._request import Request, claim_strings
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
    return _by_policies(plan, req, trace, INGRESS)


def decide_egress(plan: EgressPlan, flow: Flow, *, explain: bool = False) -> Decision:
    """Decide `flow` at its source on the source's egress `plan` (enforced egress DENY first,
    AUDIT recorded, then ALLOW, else the Mesh `defaultEgressPolicy`)."""
    trace = tuple(_trace(p, flow) for p in plan.policies) if explain else ()
    return _by_policies(plan, flow, trace, EGRESS)


@dataclass(frozen=True, slots=True)
class _Direction:
    """How the shared decision procedure words and defaults one direction."""

    kind: str  # "" (ingress) or "egress "
    subject: str  # what the policies select
    default: str  # the Mesh field that decides when no ALLOW policy selects the subject

    def default_of(self, mesh: MeshSpec) -> Effect:
        return Effect(mesh.default_egress_policy if self.kind else mesh.default_policy)


INGRESS = _Direction("", "this workload", "defaultPolicy")
EGRESS = _Direction("egress ", "this source", "defaultEgressPolicy")


def _by_policies(
    plan: Any, subject: Any, trace: tuple[PolicyTrace, ...], way: _Direction
) -> Decision:
    """Semantics 2-5 on an ingress plan and Request, or an egress plan and Flow (both offer
    `deny`/`allow`/`audit`/`dry_run_index` indexes with `matching` and `first_match`)."""
    dry_run = plan.dry_run_index.reduce(subject, _dry_runs, plan) if plan.dry_run else ()
    audit = plan.audit.reduce(subject, _audits, plan)
    denied = plan.deny.reduce(subject, _first, plan)
    if denied is not None:
        reason = f"{way.kind}DENY rule {denied.name} matched"
        return Decision(False, denied.policy, denied.index, reason, dry_run, audit, trace)
    if plan.has_allow:
        allowed = plan.allow.reduce(subject, _first, plan)
        if allowed is not None:
            reason = f"{way.kind}ALLOW rule {allowed.name} matched"
            return Decision(True, allowed.policy, allowed.index, reason, dry_run, audit, trace)
        reason = f"{way.kind}ALLOW policies select {way.subject} but none of their rules matched"
        return Decision(False, Cause.DEFAULT_DENY, None, reason, dry_run, audit, trace)
    if way.default_of(plan.mesh) is Effect.DENY:
        reason = f"no {way.kind}ALLOW policy selects {way.subject}; Mesh {way.default} is deny"
        return Decision(False, Cause.DEFAULT_DENY, None, reason, dry_run, audit, trace)
    reason = monitor_reason(plan.mesh, plan.workload.namespace) or (
        f"no {way.kind}ALLOW policy selects {way.subject}; Mesh {way.default} is allow"
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


def _first_per_policy(matching: Iterable[Any]) -> dict[str, Any]:
    """The first matching rule of each policy, in policy order (rules come in that order)."""
    first: dict[str, Any] = {}
    for rule in matching:
        first.setdefault(rule.policy, rule)
    return first


def _first(_plan: Any, matching: Iterator[Any]) -> Any:
    """The first matching rule (None: none matches)."""
    return next(matching, None)


def _audits(_plan: Any, matching: Iterator[Any]) -> tuple[Outcome, ...]:
    """The AUDIT outcomes: the first matching rule of each AUDIT policy."""
    return tuple(
        Outcome(rule.policy, Action.AUDIT, rule.index)
        for rule in _first_per_policy(matching).values()
    )


def _dry_runs(plan: Any, matching: Iterator[Any]) -> tuple[Outcome, ...]:
    """The outcomes of the plan's dry-run policies, given their matching rules."""
    matched = _first_per_policy(matching)
    if not matched:
        unmatched: tuple[Outcome, ...] = plan.dry_run_unmatched
        return unmatched
    outcomes = []
    for policy, none, by_rule in plan.dry_run_outcomes:
        rule = matched.get(policy)
        outcome = none if rule is None else by_rule[rule.index]
        if outcome is not None:
            outcomes.append(outcome)
    return tuple(outcomes)


def _trace(policy: CompiledPolicy | EgressPolicy, req: Any) -> PolicyTrace:
    reasons = tuple(rule.mismatch(req) for rule in policy.rules)
    matched = next((i for i, r in enumerate(reasons) if r is None), None)
    note = "" if policy.rules else "no rules: matches nothing"
    return PolicyTrace(policy.ref, policy.action, policy.mode, matched, reasons, note)
