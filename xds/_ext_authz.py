"""ext_authz enforcement: the sidecar asks the engine (envoy.service.auth.v3.Authorization).

STUB — filled in by the ext_authz work (issue 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshwarden.engine import AuthorizationPlan

if TYPE_CHECKING:
    from meshwarden.xds._translate import TranslationContext


def ext_authz_http_filter(
    plan: AuthorizationPlan, port: int, identified: bool, ctx: TranslationContext
) -> dict[str, Any]:
    """The HTTP filter that replaces the RBAC filters for an ext-authz workload."""
    raise NotImplementedError(f"{plan.workload.ref}: ext-authz enforcement is not built yet")


def ext_authz_network_filter(
    plan: AuthorizationPlan, port: int, identified: bool, ctx: TranslationContext
) -> dict[str, Any]:
    """The network filter that replaces network RBAC on a tcp port of an ext-authz workload."""
    raise NotImplementedError(f"{plan.workload.ref}: ext-authz enforcement is not built yet")
