"""Per-namespace, per-workload and per-port mTLS modes (what Istio's PeerAuthentication sets).

The most specific setting wins: `Workload.spec.ports[].mtls`, then `Workload.spec.mtls`, then
`Mesh.spec.namespaces.<ns>.mtls`, then `Mesh.spec.mtls`. STRICT accepts only peers with a
verified client certificate; PERMISSIVE also accepts plaintext peers, whom only the IP-fallback
layer can match. There is no DISABLE: a sidecar always accepts mTLS from the mesh.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshwarden.engine._model import MeshSpec

if TYPE_CHECKING:
    from meshwarden.engine._registry import Workload

STRICT = "STRICT"
PERMISSIVE = "PERMISSIVE"


@dataclass(frozen=True, slots=True)
class MtlsSetting:
    """The mode in force on one port of one workload, and the setting it comes from."""

    mode: str
    origin: str

    @property
    def strict(self) -> bool:
        return self.mode == STRICT


def mtls_setting(mesh: MeshSpec, workload: Workload, port: int) -> MtlsSetting:
    """The mode for `port` of `workload` (a port the workload does not declare takes the
    workload's mode)."""
    declared = workload.ports.get(port)
    if declared is not None and declared.mtls is not None:
        return MtlsSetting(declared.mtls, f"port {port} of Workload {workload.ref}")
    if workload.spec.mtls is not None:
        return MtlsSetting(workload.spec.mtls, f"Workload {workload.ref}")
    settings = mesh.namespaces.get(workload.namespace)
    if settings is not None and settings.mtls is not None:
        return MtlsSetting(settings.mtls, f"Mesh namespaces.{workload.namespace}")
    return MtlsSetting(mesh.mtls, "Mesh")


def accepts_plaintext(mesh: MeshSpec, workload: Workload) -> bool:
    """Whether any port of `workload` (or the workload's own mode) is PERMISSIVE."""
    numbers = [*workload.ports, 0]  # 0: a port the workload does not declare
    return any(not mtls_setting(mesh, workload, n).strict for n in numbers)


def any_plaintext(mesh: MeshSpec, workloads: Iterable[Workload]) -> bool:
    """Whether a plaintext peer can reach one of `workloads` (the Mesh mode when there are none)."""
    found = list(workloads)
    if not found:
        return mesh.mtls == PERMISSIVE
    return any(accepts_plaintext(mesh, w) for w in found)
