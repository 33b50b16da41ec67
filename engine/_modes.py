"""Monitor mode: `Mesh.spec.defaultMode` and `Mesh.spec.namespaces.<ns>.defaultMode`.

Resolved when a workload's plan is built: in a namespace whose mode is `dry-run`, every enforced
ALLOW and DENY policy selecting the workload runs as dry-run (recorded as "would allow/deny",
never deciding) and the Mesh `defaultPolicy` is `allow` for it; so do the egress policies
selecting it as a source (and `defaultEgressPolicy` is `allow`). AUDIT policies, mTLS and token
checks are unchanged. The policies themselves (and `check`, `lint`) keep their own mode; only
the plan — and so the evaluator, `explain` and the sidecars' RBAC — sees the relaxed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from meshwarden.engine._model import MeshSpec
from meshwarden.engine._vocabulary import Action, Effect, Mode

if TYPE_CHECKING:
    from meshwarden.engine._egress import EgressPolicy
    from meshwarden.engine._plan import CompiledPolicy

DRY_RUN = Mode.DRY_RUN


def namespace_mode(mesh: MeshSpec, namespace: str) -> str:
    """`enforce` or `dry-run` for workloads of `namespace`."""
    settings = mesh.namespaces.get(namespace)
    if settings is not None and settings.default_mode is not None:
        return settings.default_mode
    return mesh.default_mode


PolicyT = TypeVar("PolicyT", "CompiledPolicy", "EgressPolicy")


def monitored(
    mesh: MeshSpec, namespace: str, policies: Sequence[PolicyT]
) -> tuple[MeshSpec, list[PolicyT]]:
    """The mesh settings and policies a plan for a workload of `namespace` uses."""
    if namespace_mode(mesh, namespace) != DRY_RUN:
        return mesh, list(policies)
    relaxed = [
        replace(p, mode=Mode.DRY_RUN)
        if p.action in (Action.ALLOW, Action.DENY) and not p.dry_run
        else p
        for p in policies
    ]
    allow = Effect.ALLOW.value
    defaults = {"default_policy": allow, "default_egress_policy": allow}
    return mesh.model_copy(update=defaults), relaxed


def monitor_reason(mesh: MeshSpec, namespace: str) -> str:
    """The reason of an allow that monitor mode made ("" outside monitor mode)."""
    if namespace_mode(mesh, namespace) != DRY_RUN:
        return ""
    return (
        f"monitor mode: namespace {namespace} runs its ALLOW/DENY policies as dry-run "
        "and lets every request through"
    )
