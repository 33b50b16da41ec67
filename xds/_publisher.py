"""Compiled mesh → one Snapshot per workload, rebuilt only for the workloads a change affects."""

from __future__ import annotations

from collections.abc import Iterable

from meshwarden.engine import CompiledMesh
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._encode import ResourceEncoder
from meshwarden.xds._snapshot import Snapshot
from meshwarden.xds._tracing import policy_version
from meshwarden.xds._translate import workload_resources


class SnapshotBuilder:
    """Translates and encodes per workload; unchanged resources reuse their cached bytes."""

    def __init__(self, context: TranslationContext | None = None) -> None:
        self.context = context or TranslationContext()
        self.encoder = ResourceEncoder()
        self.policy_versions: dict[str, str] = {}  # workload → what its decision spans say

    def snapshot(self, mesh: CompiledMesh, workload: str) -> Snapshot:
        resources = workload_resources(mesh, workload, self.context)
        if self.context.tracing is not None:
            self.policy_versions[workload] = policy_version(mesh, workload)
        return Snapshot.of(self.encoder.encode_all(resources))

    def snapshots(self, mesh: CompiledMesh, workloads: Iterable[str]) -> dict[str, Snapshot]:
        return {ref: self.snapshot(mesh, ref) for ref in sorted(workloads)}
