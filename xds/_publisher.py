"""Compiled mesh → one Snapshot per workload, rebuilt only for the workloads a change affects."""

from __future__ import annotations

from collections.abc import Iterable

from meshwarden.engine import CompiledMesh, EgressPlan, Registry
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._encode import ResourceEncoder
from meshwarden.xds._rbac import InboundRbac
from meshwarden.xds._snapshot import Resource, Snapshot
from meshwarden.xds._tracing import policy_version
from meshwarden.xds._translate import plan_resources, wiring_resources


class SnapshotBuilder:
    """Translates and encodes per workload; unchanged resources reuse their cached bytes.

    A workload's wiring (`wiring_resources`: clusters, endpoints, outbound listeners, routes)
    depends only on the registry, its egress plan and the context, so it is kept encoded and
    rebuilt only when one of those is a different object: a policy change that touches every
    workload's inbound RBAC translates and encodes only the inbound listeners again."""

    def __init__(self, context: TranslationContext | None = None) -> None:
        self.context = context or TranslationContext()
        self.encoder = ResourceEncoder()
        self.rbac = InboundRbac()  # inbound RBAC filters, once per distinct plan content
        self.policy_versions: dict[str, str] = {}  # workload → what its decision spans say
        self._registry: Registry | None = None  # the registry the wiring below was built from
        self._wiring: dict[str, tuple[EgressPlan | None, list[Resource]]] = {}

    def snapshot(self, mesh: CompiledMesh, workload: str) -> Snapshot:
        resources = self._wiring_of(mesh, workload)
        self.rbac.for_mesh(mesh)
        planned = plan_resources(mesh, workload, self.context, self.rbac)
        resources += self.encoder.encode_all(planned)
        if self.context.tracing is not None:
            self.policy_versions[workload] = policy_version(mesh, workload)
        return Snapshot.of(resources)

    def _wiring_of(self, mesh: CompiledMesh, workload: str) -> list[Resource]:
        if mesh.registry is not self._registry:  # a full recompile: nothing is known to hold
            self._registry, self._wiring = mesh.registry, {}
        egress = mesh.egress_plans.get(workload)  # None: the Mesh's default, from the registry
        known = self._wiring.get(workload)
        if known is None or known[0] is not egress:
            built = self.encoder.encode_all(wiring_resources(mesh, workload, self.context))
            self._wiring[workload] = known = (egress, built)
        return list(known[1])

    def snapshots(self, mesh: CompiledMesh, workloads: Iterable[str]) -> dict[str, Snapshot]:
        return {ref: self.snapshot(mesh, ref) for ref in sorted(workloads)}
