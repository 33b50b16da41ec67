"""Egress at the source sidecar, for mesh traffic through its `upstreams`.

Egress rules are L4 and a mesh destination is matched by its identity only, so the source's
egress decision for each endpoint of an upstream is known when resources are built: the cluster
keeps only the endpoints egress allows and its upstream TLS accepts only their identities; an
upstream egress denies entirely gets a network RBAC filter that closes every connection, its
action named after the deciding policy rule (`ns/name#index`) or the default (`default:deny`).

What was decided travels with the configuration, so the flow log can say it per connection
(`xds/_egress_log.py`): each endpoint carries its verdict (and the dry-run one) as host
metadata, and a closed upstream carries its cause on the listener. Where dry-run egress
policies select the source (or its namespace is in monitor mode), a network RBAC
`shadow_matcher` on the outbound listener counts what enforcing them would do to each
connection (`meshwarden_egress_dryrun_shadow_allowed/denied`): deny when they would deny every
endpoint of the upstream, as enforcement would close it then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshwarden.engine import CompiledMesh, Effect, Flow, Workload, decide_egress
from meshwarden.xds._decisions import Verdict, verdict_of
from meshwarden.xds._envoy import extension
from meshwarden.xds._predicates import TRUE
from meshwarden.xds._rbac import action

EGRESS_STAT_PREFIX = "meshwarden_egress_"
EGRESS_DRY_RUN_PREFIX = "meshwarden_egress_dryrun_"
HOST_METADATA = "meshwarden"  # the filter-metadata namespace of an endpoint's egress verdict


@dataclass(frozen=True, slots=True)
class EndpointEgress:
    """What the source's egress makes of one endpoint of an upstream."""

    workload: Workload
    verdict: Verdict

    @property
    def allowed(self) -> bool:
        return self.verdict.decision == Effect.ALLOW


@dataclass(frozen=True, slots=True)
class UpstreamEgress:
    """What the source's egress makes of one upstream: a verdict per serving endpoint."""

    endpoints: tuple[EndpointEgress, ...]

    @property
    def allowed(self) -> tuple[Workload, ...]:
        """The endpoints the source may reach."""
        return tuple(e.workload for e in self.endpoints if e.allowed)

    @property
    def denied_by(self) -> str | None:
        """The cause that closes the upstream when the source may reach none of its endpoints
        (the first endpoint's), else None."""
        if not self.endpoints or self.allowed:
            return None
        return cause_of(self.endpoints[0].verdict)

    @property
    def closing(self) -> Verdict | None:
        """The verdict behind closing the upstream (None when it stays open)."""
        return None if self.denied_by is None else self.endpoints[0].verdict

    @property
    def dry_run(self) -> Verdict | None:
        """What enforcing the dry-run policies would do to a connection: deny when they would
        deny every endpoint (named after the first), else allow (named after the first they
        allow); None without dry-run policies or endpoints."""
        dry = [e.verdict for e in self.endpoints if e.verdict.dry_run_decision is not None]
        if not dry or len(dry) != len(self.endpoints):
            return None
        allowing = [v for v in dry if v.dry_run_decision == Effect.ALLOW]
        chosen = (allowing or dry)[0]
        assert chosen.dry_run_decision is not None and chosen.dry_run_policy is not None
        return Verdict(chosen.dry_run_decision, chosen.dry_run_policy)


def cause_of(verdict: Verdict) -> str:
    """`ns/name#index` for a rule, else the default's cause."""
    if verdict.rule is None:
        return verdict.policy
    return f"{verdict.policy}#{verdict.rule}"


def upstream_egress(
    mesh: CompiledMesh, source: Workload, port: int, serving: Sequence[Workload]
) -> UpstreamEgress:
    plan = mesh.egress_plan(source.ref)
    endpoints = []
    for workload in serving:
        flow = Flow.build(
            source.ref,
            port,
            "tcp",
            destination=workload.ref,
            identity=workload.identity,
            address=workload.addresses[0] if workload.addresses else None,
        )
        endpoints.append(EndpointEgress(workload, verdict_of(plan, decide_egress(plan, flow))))
    return UpstreamEgress(tuple(endpoints))


def egress_rbac_filter(egress: UpstreamEgress) -> dict[str, Any] | None:
    """The network RBAC filter of an outbound listener: closes every connection when egress
    closes the upstream (its action named after the cause), and shadow-decides the dry-run
    verdict where one applies; None when neither does."""
    fields: dict[str, Any] = {"statPrefix": EGRESS_STAT_PREFIX}
    if egress.denied_by is not None:
        fields["matcher"] = _always(egress.denied_by, Effect.DENY)
    dry = egress.dry_run
    if dry is not None:
        fields["shadowMatcher"] = _always(cause_of(dry), dry.decision)
        fields["shadowRulesStatPrefix"] = EGRESS_DRY_RUN_PREFIX
    if len(fields) == 1:
        return None
    rbac = "envoy.extensions.filters.network.rbac.v3.RBAC"
    return extension("envoy.filters.network.rbac", rbac, **fields)


def _always(name: str, effect: Effect) -> dict[str, Any]:
    verb = "ALLOW" if effect == Effect.ALLOW else "DENY"
    return {"matcherList": {"matchers": [{"predicate": TRUE, "onMatch": action(name, verb)}]}}
