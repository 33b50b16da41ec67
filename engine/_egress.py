"""Egress policies compiled into one EgressPlan per source workload.

An AuthorizationPolicy with `direction: egress` selects SOURCE workloads; its rules say where they
may connect. The plan mirrors the ingress `AuthorizationPlan` (enforced DENY first, AUDIT
recorded, then ALLOW, dry-run beside), so the evaluator decides both with one code path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from meshwarden.engine._documents import Document
from meshwarden.engine._egress_rules import CompiledDestination, CompiledEgressRule, Flow
from meshwarden.engine._model import EgressPolicySpec, MeshSpec
from meshwarden.engine._modes import monitored
from meshwarden.engine._outcome import Outcome
from meshwarden.engine._plan import (
    DryRunOutcomes,
    PolicyFacts,
    R,
    dry_run_outcomes,
    index_policies,
    unmatched,
)
from meshwarden.engine._registry import Registry, Workload
from meshwarden.engine._vocabulary import Action, Mode, Peers

Entry = tuple[int, CompiledEgressRule]


def is_egress(doc: Document[Any]) -> bool:
    """Whether `doc` is an AuthorizationPolicy with `direction: egress`."""
    return doc.kind == "AuthorizationPolicy" and isinstance(doc.spec, EgressPolicySpec)


@dataclass(frozen=True, slots=True, eq=False)
class EgressPolicy(PolicyFacts):
    """An egress AuthorizationPolicy compiled: its rules and the SOURCE workloads it selects."""

    namespace: str
    name: str
    action: Action
    mode: Mode
    rules: tuple[CompiledEgressRule, ...]
    targets: frozenset[str]
    document: Document[Any]


def compile_egress_policy(doc: Document[EgressPolicySpec], registry: Registry) -> EgressPolicy:
    namespace = doc.metadata.namespace
    rules = []
    for i, rule in enumerate(doc.spec.rules or []):
        destinations = None
        if rule.to:
            destinations = tuple(
                CompiledDestination.of(
                    d, registry.identities_of(d.workloads, namespace) if d.workloads else None
                )
                for d in rule.to
            )
        where = doc.at("spec", "rules", i)
        rules.append(CompiledEgressRule.of(doc.ref, i, rule, destinations, where))
    spec = doc.spec
    return EgressPolicy(
        namespace,
        doc.metadata.name,
        Action(spec.action),
        Mode(spec.mode),
        tuple(rules),
        registry.targets(doc),
        doc,
    )


@dataclass(slots=True)
class DestinationIndex:
    """Egress rules keyed by the destination identity they name exactly (selected workloads,
    exact `identities`); every other rule is a candidate for every flow."""

    exact: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    other: list[Entry] = field(default_factory=list)
    size: int = 0

    def add(self, rule: CompiledEgressRule) -> None:
        entry = (self.size, rule)
        self.size += 1
        if not rule.destinations:
            self.other.append(entry)
            return
        for dest in rule.destinations:
            if dest.peers is Peers.NONE:
                continue  # can never match
            keys = _exact_keys(dest)
            if keys is None:
                self.other.append(entry)
            for identity in keys or ():
                self.exact[identity].append(entry)

    def candidates(self, flow: Flow) -> tuple[CompiledEgressRule, ...]:
        """Rules that may match `flow`, in policy order, each once."""
        lists = [self.other]
        if flow.identity is not None:
            lists.append(self.exact.get(flow.identity, []))
        found = {seq: rule for entries in lists for seq, rule in entries}
        return tuple(
            found[seq] for seq in sorted(found) if found[seq].admits(flow.port, flow.protocol)
        )

    def first_match(self, flow: Flow) -> CompiledEgressRule | None:
        for rule in self.candidates(flow):
            if rule.matches(flow):
                return rule
        return None

    def matching(self, flow: Flow) -> Iterator[CompiledEgressRule]:
        """The rules that match `flow`, in policy order."""
        return (rule for rule in self.candidates(flow) if rule.matches(flow))

    def reduce(
        self, flow: Flow, reducer: Callable[[Any, Iterator[CompiledEgressRule]], R], plan: Any
    ) -> R:
        """`reducer(plan, matching rules)`, as `RuleIndex.reduce` (nothing remembered here)."""
        return reducer(plan, self.matching(flow))


def _exact_keys(dest: CompiledDestination) -> frozenset[str] | None:
    """The identities a destination can only ever match, or None when it is not so limited."""
    if dest.workloads is not None:
        return dest.workloads
    ids = dest.identities
    if ids is not None and not ids.anything and not ids.prefixes and not ids.suffixes:
        return frozenset(ids.exact)
    return None


@dataclass(frozen=True, slots=True, eq=False)
class EgressPlan:
    """Everything needed to decide any flow from one source workload."""

    workload: Workload
    mesh: MeshSpec
    policies: tuple[EgressPolicy, ...]
    deny: DestinationIndex
    allow: DestinationIndex
    audit: DestinationIndex
    has_allow: bool
    dry_run: tuple[EgressPolicy, ...]
    dry_run_index: DestinationIndex
    dry_run_unmatched: tuple[Outcome, ...]
    dry_run_outcomes: tuple[DryRunOutcomes, ...]


def build_egress_plan(
    workload: Workload, mesh: MeshSpec, policies: list[EgressPolicy]
) -> EgressPlan:
    mesh, policies = monitored(mesh, workload.namespace, policies)
    ordered = sorted(policies, key=lambda p: (p.namespace, p.name))
    indexes, dry_run_index, has_allow = index_policies(ordered, DestinationIndex)
    return EgressPlan(
        workload,
        mesh,
        tuple(ordered),
        indexes[Action.DENY],
        indexes[Action.ALLOW],
        indexes[Action.AUDIT],
        has_allow,
        tuple(p for p in ordered if p.dry_run),
        dry_run_index,
        unmatched(ordered),
        dry_run_outcomes(ordered),
    )
