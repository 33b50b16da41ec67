"""Documents → registry → compiled policies → one AuthorizationPlan per workload, incrementally."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from meshwarden.engine._collection import collection_paused
from meshwarden.engine._conditions import compile_condition
from meshwarden.engine._documents import Document, DocumentKey
from meshwarden.engine._egress import (
    EgressPlan,
    EgressPolicy,
    build_egress_plan,
    compile_egress_policy,
    is_egress,
)
from meshwarden.engine._model import AuthorizationPolicySpec, JwtIssuerSpec
from meshwarden.engine._plan import AuthorizationPlan, CompiledPolicy, build_plan
from meshwarden.engine._registry import Registry, build_registry
from meshwarden.engine._rules import (
    CompiledOperation,
    CompiledRule,
    CompiledSource,
)
from meshwarden.engine._vocabulary import Action, Mode

Issuer = tuple[Document[JwtIssuerSpec], frozenset[str]]


def compile_policy(doc: Document[AuthorizationPolicySpec], registry: Registry) -> CompiledPolicy:
    namespace = doc.metadata.namespace
    rules = []
    for i, rule in enumerate(doc.spec.rules or []):
        sources = None
        if rule.from_:
            sources = tuple(
                CompiledSource.of(
                    s,
                    registry.identities_of(s.workloads, namespace) if s.workloads else None,
                )
                for s in rule.from_
            )
        operations = tuple(CompiledOperation.of(o) for o in rule.to) if rule.to else None
        conditions = tuple(compile_condition(c) for c in rule.when or ())
        rules.append(
            CompiledRule(doc.ref, i, sources, operations, conditions, doc.at("spec", "rules", i))
        )
    spec = doc.spec
    targets = registry.targets(doc)
    return CompiledPolicy(
        namespace,
        doc.metadata.name,
        Action(spec.action),
        Mode(spec.mode),
        tuple(rules),
        targets,
        doc,
    )


def document_hash(doc: Document[Any]) -> str:
    text = json.dumps([doc.kind, doc.source.data], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CompiledMesh:
    """An immutable, consistent snapshot: registry, compiled policies and per-workload plans.

    `with_policy_changes` builds the next snapshot touching only the workloads a change affects;
    the previous snapshot stays valid (the last good state keeps serving)."""

    registry: Registry
    documents: Mapping[DocumentKey, Document[Any]]
    policies: Mapping[str, CompiledPolicy]
    issuers: Mapping[str, Issuer]
    by_workload: Mapping[str, frozenset[str]]
    plans: Mapping[str, AuthorizationPlan]
    hashes: Mapping[DocumentKey, str]
    # egress policies (by ref), the egress policies selecting each source, and the plans of the
    # sources that have any (`egress_plan` builds the others' on demand)
    egress_policies: Mapping[str, EgressPolicy] = field(default_factory=dict)
    egress_by_workload: Mapping[str, frozenset[str]] = field(default_factory=dict)
    egress_plans: Mapping[str, EgressPlan] = field(default_factory=dict)
    # results computed from this snapshot and kept with it (a new snapshot starts empty): the
    # shadowed-rule analysis that `check` (on load) and `lint` both report
    derived: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.hashes, key=lambda k: (k.kind, k.namespace, k.name)):
            digest.update(self.hashes[key].encode())
        return digest.hexdigest()[:16]

    def plan(self, workload: str) -> AuthorizationPlan:
        return self.plans[workload]

    def egress_plan(self, workload: str) -> EgressPlan:
        """The egress plan of a source workload (one without egress policies gets the Mesh's
        `defaultEgressPolicy`)."""
        plan = self.egress_plans.get(workload)
        if plan is None:
            plan = build_egress_plan(self.registry.workloads[workload], self.registry.mesh.spec, [])
        return plan

    def issuers_for(self, workload: str) -> list[Document[JwtIssuerSpec]]:
        return [doc for doc, targets in self.issuers.values() if workload in targets]

    def with_policy_changes(
        self,
        upserts: Iterable[Document[Any]] = (),
        deletes: Iterable[DocumentKey] = (),
    ) -> tuple[CompiledMesh, frozenset[str]]:
        """Apply AuthorizationPolicy / JwtIssuer changes; returns the new snapshot and the refs
        of the workloads whose plans were rebuilt. Other kinds need `compile_documents`."""
        documents = dict(self.documents)
        hashes = dict(self.hashes)
        policies = dict(self.policies)
        issuers = dict(self.issuers)
        moves: list[tuple[str, frozenset[str], frozenset[str]]] = []  # policy, old, new targets
        egress = _EgressChanges(dict(self.egress_policies))
        affected: set[str] = set()
        for key in deletes:
            documents.pop(key, None)
            hashes.pop(key, None)
            ref = f"{key.namespace}/{key.name}"
            if egress.delete(key):
                continue
            if key.kind == "AuthorizationPolicy" and ref in policies:
                moves.append((ref, policies.pop(ref).targets, frozenset()))
            elif key.kind == "JwtIssuer" and ref in issuers:
                affected |= issuers.pop(ref)[1]
        for doc in upserts:
            documents[doc.key] = doc
            hashes[doc.key] = document_hash(doc)
            if is_egress(doc) or (doc.key in self.documents and is_egress(self.documents[doc.key])):
                egress.upsert(doc, self.registry)
                if is_egress(doc):
                    if doc.ref in policies:  # was an ingress policy
                        moves.append((doc.ref, policies.pop(doc.ref).targets, frozenset()))
                    continue
            if doc.kind == "AuthorizationPolicy":
                old_policy = policies.get(doc.ref)
                policies[doc.ref] = new = compile_policy(doc, self.registry)
                old_targets = old_policy.targets if old_policy else frozenset()
                moves.append((doc.ref, old_targets, new.targets))
            elif doc.kind == "JwtIssuer":
                old_targets = issuers[doc.ref][1] if doc.ref in issuers else frozenset()
                targets = self.registry.targets(doc)
                issuers[doc.ref] = (doc, targets)
                affected |= old_targets | targets
            else:
                raise ValueError(f"{doc.key} needs a full recompile (compile_documents)")
        by_workload = _moved(self.by_workload, moves)
        for _, old_targets, new_targets in moves:
            affected |= old_targets | new_targets
        plans = dict(self.plans)
        egress_by_workload = _moved(self.egress_by_workload, egress.moves)
        egress_plans = dict(self.egress_plans)
        snapshot = replace(
            self,
            documents=documents,
            policies=policies,
            issuers=issuers,
            by_workload=by_workload,
            plans=plans,
            hashes=hashes,
            egress_policies=egress.policies,
            egress_by_workload=egress_by_workload,
            egress_plans=egress_plans,
        )
        for ref in affected:
            plans[ref] = _plan_for(snapshot, ref)
        for ref in egress.affected:
            egress_plans[ref] = _egress_plan_for(snapshot, ref)
        return snapshot, frozenset(affected | egress.affected)


def _moved(
    by_workload: Mapping[str, frozenset[str]],
    moves: list[tuple[str, frozenset[str], frozenset[str]]],
) -> dict[str, frozenset[str]]:
    """A copy of the workload → policies map with each moved policy's old targets dropped and
    new targets added; only the touched entries are rebuilt."""
    result = dict(by_workload)
    for policy, old_targets, new_targets in moves:
        for ref in old_targets - new_targets:
            result[ref] = result.get(ref, frozenset()) - {policy}
        for ref in new_targets - old_targets:
            result[ref] = result.get(ref, frozenset()) | {policy}
    return result


def _plan_for(mesh: CompiledMesh, ref: str) -> AuthorizationPlan:
    workload = mesh.registry.workloads[ref]
    policies = [mesh.policies[p] for p in mesh.by_workload.get(ref, ())]
    return build_plan(workload, mesh.registry.mesh.spec, policies, mesh.issuers_for(ref))


def _egress_plan_for(mesh: CompiledMesh, ref: str) -> EgressPlan:
    policies = [mesh.egress_policies[p] for p in mesh.egress_by_workload.get(ref, ())]
    return build_egress_plan(mesh.registry.workloads[ref], mesh.registry.mesh.spec, policies)


@dataclass(slots=True)
class _EgressChanges:
    """Egress policies added, changed or deleted by one incremental change."""

    policies: dict[str, EgressPolicy]
    moves: list[tuple[str, frozenset[str], frozenset[str]]] = field(default_factory=list)

    @property
    def affected(self) -> set[str]:
        return {ref for _, old, new in self.moves for ref in old | new}

    def delete(self, key: DocumentKey) -> bool:
        ref = f"{key.namespace}/{key.name}"
        if key.kind != "AuthorizationPolicy" or ref not in self.policies:
            return False
        self.moves.append((ref, self.policies.pop(ref).targets, frozenset()))
        return True

    def upsert(self, doc: Document[Any], registry: Registry) -> None:
        """`doc` is an egress policy, or replaces one (then it is only removed here)."""
        old = self.policies.pop(doc.ref, None)
        old_targets = old.targets if old else frozenset()
        new_targets: frozenset[str] = frozenset()
        if is_egress(doc):
            self.policies[doc.ref] = new = compile_egress_policy(doc, registry)
            new_targets = new.targets
        self.moves.append((doc.ref, old_targets, new_targets))


def compile_documents(documents: Iterable[Document[Any]]) -> CompiledMesh:
    """Full compile. Documents must already be free of errors (see `load`)."""
    with collection_paused():
        return _compile_documents(documents)


def _compile_documents(documents: Iterable[Document[Any]]) -> CompiledMesh:
    by_kind: dict[str, list[Document[Any]]] = defaultdict(list)
    all_docs: dict[DocumentKey, Document[Any]] = {}
    for doc in documents:
        by_kind[doc.kind].append(doc)
        all_docs[doc.key] = doc
    registry, _ = build_registry(
        by_kind["Mesh"], by_kind["Workload"], by_kind["Service"], by_kind["Host"]
    )
    ingress = [d for d in by_kind["AuthorizationPolicy"] if not is_egress(d)]
    policies = {d.ref: compile_policy(d, registry) for d in ingress}
    issuers = {d.ref: (d, registry.targets(d)) for d in by_kind["JwtIssuer"]}
    by_workload: dict[str, set[str]] = {ref: set() for ref in registry.workloads}
    for policy in policies.values():
        for w in policy.targets:
            by_workload[w].add(policy.ref)
    issuers_by_workload: dict[str, list[Document[JwtIssuerSpec]]] = defaultdict(list)
    for doc, targets in issuers.values():
        for w in targets:
            issuers_by_workload[w].append(doc)
    plans = {
        ref: build_plan(
            workload,
            registry.mesh.spec,
            [policies[p] for p in by_workload[ref]],
            issuers_by_workload[ref],
        )
        for ref, workload in registry.workloads.items()
    }
    hashes = {key: document_hash(doc) for key, doc in all_docs.items()}
    frozen = {k: frozenset(v) for k, v in by_workload.items()}
    egress = {
        d.ref: compile_egress_policy(d, registry)
        for d in by_kind["AuthorizationPolicy"]
        if is_egress(d)
    }
    egress_by_workload = _moved({}, [(ref, frozenset(), p.targets) for ref, p in egress.items()])
    egress_plans = _egress_plans(registry, egress, egress_by_workload)
    return CompiledMesh(
        registry,
        all_docs,
        policies,
        issuers,
        frozen,
        plans,
        hashes,
        egress,
        egress_by_workload,
        egress_plans,
    )


def _egress_plans(
    registry: Registry,
    egress: Mapping[str, EgressPolicy],
    by_workload: Mapping[str, frozenset[str]],
) -> dict[str, EgressPlan]:
    return {
        ref: build_egress_plan(
            registry.workloads[ref], registry.mesh.spec, [egress[p] for p in refs]
        )
        for ref, refs in by_workload.items()
        if refs
    }
