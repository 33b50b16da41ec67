"""ext_authz enforcement, the translation side: the Envoy filters that replace the RBAC filters
for a workload with `enforcement: ext-authz` (HTTP ports: after jwt_authn, before the router; tcp
ports: the network filter before tcp_proxy), calling `Check` on the control plane through
`TranslationContext.ext_authz_cluster` and naming the workload and port in the call's metadata."""

from __future__ import annotations

from typing import Any

from meshwarden.engine import AuthorizationPlan
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._envoy import extension

WORKLOAD_HEADER = "x-meshwarden-workload"  # gRPC initial metadata set by the filter config
PORT_HEADER = "x-meshwarden-port"
JWT_AUTHN_NS = "envoy.filters.http.jwt_authn"


def _duration(value: str) -> str:
    """`250ms` / `2s` (the model's spelling) → protobuf JSON duration."""
    if value.endswith("ms"):
        return f"{int(value[:-2]) / 1000:g}s"
    return f"{int(value[:-1])}s"


def _grpc_service(plan: AuthorizationPlan, port: int, ctx: TranslationContext) -> dict[str, Any]:
    if ctx.ext_authz_cluster is None:
        raise ValueError(f"{plan.workload.ref}: ext-authz enforcement needs ext_authz_cluster")
    metadata = [
        {"key": WORKLOAD_HEADER, "value": plan.workload.ref},
        {"key": PORT_HEADER, "value": str(port)},
    ]
    return {
        "envoyGrpc": {"clusterName": ctx.ext_authz_cluster},
        "timeout": _duration(plan.mesh.ext_authz.timeout),
        "initialMetadata": metadata,
    }


def _calling(plan: AuthorizationPlan, port: int, ctx: TranslationContext) -> dict[str, Any]:
    """The fields both filters share: whom they call, and what happens when it does not answer."""
    return {
        "grpcService": _grpc_service(plan, port, ctx),
        "transportApiVersion": "V3",
        "failureModeAllow": plan.mesh.ext_authz.fail_open,
        "statPrefix": "authz_",
    }


def ext_authz_http_filter(
    plan: AuthorizationPlan, port: int, identified: bool, ctx: TranslationContext
) -> dict[str, Any]:
    """The HTTP filter that replaces the RBAC filters for an ext-authz workload. The peer's
    identity reaches the engine as `source.principal` (empty on a plaintext chain)."""
    del identified  # the engine reads the peer from the request itself
    return extension(
        "envoy.filters.http.ext_authz",
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        statusOnError={"code": "Forbidden"},
        metadataContextNamespaces=[JWT_AUTHN_NS],
        **_calling(plan, port, ctx),
    )


def ext_authz_network_filter(
    plan: AuthorizationPlan, port: int, identified: bool, ctx: TranslationContext
) -> dict[str, Any]:
    """The network filter that replaces network RBAC on a tcp port of an ext-authz workload."""
    del identified
    return extension(
        "envoy.filters.network.ext_authz",
        "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
        **_calling(plan, port, ctx),
    )
