"""Documents → registry → compiled policies → one AuthorizationPlan per workload, incrementally."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshwarden.engine._collection import collection_paused
from meshwarden.engine._conditions import compile_condition
from meshwarden.engine._documents import Document, DocumentKey
from meshwarden.engine._model import AuthorizationPolicySpec, JwtIssuerSpec, WorkloadSelector
from meshwarden.engine._plan import AuthorizationPlan, CompiledPolicy, build_plan
from meshwarden.engine._registry import Registry, build_registry
from meshwarden.engine._rules import (
    CompiledOperation,
    CompiledRule,
    CompiledSource,
)
from meshwarden.engine._vocabulary import Action, Mode

Issuer = tuple[Document[JwtIssuerSpec], frozenset[str]]


def resolve_workloads(
    selector: WorkloadSelector, namespace: str, registry: Registry
) -> frozenset[str]:
    """SPIFFE IDs of the workloads a `from.workloads` selector names (default: own namespace)."""
    refs: set[str] = set()
    for ns in selector.namespaces or [namespace]:
        refs |= registry.select(ns, selector)
    return frozenset(registry.workloads[ref].identity for ref in refs)


def compile_policy(doc: Document[AuthorizationPolicySpec], registry: Registry) -> CompiledPolicy:
    namespace = doc.metadata.namespace
    rules = []
    for i, rule in enumerate(doc.spec.rules or []):
        sources = None
        if rule.from_:
            sources = tuple(
                CompiledSource.of(
                    s,
                    resolve_workloads(s.workloads, namespace, registry) if s.workloads else None,
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
    return CompiledPolicy(namespace, doc.metadata.name, Action(spec.action), Mode(spec.mode),
                          tuple(rules), targets, doc)  # fmt: skip


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

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.hashes, key=lambda k: (k.kind, k.namespace, k.name)):
            digest.update(self.hashes[key].encode())
        return digest.hexdigest()[:16]

    def plan(self, workload: str) -> AuthorizationPlan:
        return self.plans[workload]

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
        affected: set[str] = set()
        for key in deletes:
            documents.pop(key, None)
            hashes.pop(key, None)
            ref = f"{key.namespace}/{key.name}"
            if key.kind == "AuthorizationPolicy" and ref in policies:
                moves.append((ref, policies.pop(ref).targets, frozenset()))
            elif key.kind == "JwtIssuer" and ref in issuers:
                affected |= issuers.pop(ref)[1]
        for doc in upserts:
            documents[doc.key] = doc
            hashes[doc.key] = document_hash(doc)
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
        snapshot = replace(self, documents=documents, policies=policies, issuers=issuers,
                           by_workload=by_workload, plans=plans, hashes=hashes)  # fmt: skip
        for ref in affected:
            plans[ref] = _plan_for(snapshot, ref)
        return snapshot, frozenset(affected)


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
    policies = {d.ref: compile_policy(d, registry) for d in by_kind["AuthorizationPolicy"]}
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
    return CompiledMesh(registry, all_docs, policies, issuers, frozen, plans, hashes)
