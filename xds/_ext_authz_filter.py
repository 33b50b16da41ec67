"""ext_authz enforcement, the translation side: the Envoy filters that replace the RBAC filters
for a workload with `enforcement: ext-authz` (HTTP ports: after jwt_authn, before the router; tcp
ports: the network filter before tcp_proxy), calling `Check` on the control plane and naming the
workload and port in the call's metadata: through `TranslationContext.ext_authz_cluster` (the ADS
connection), or, for a sidecar whose bootstrap declared the ext_authz front's h2 cluster,
through that one (`ext_authz_grpc_cluster`: the front's workers answer, off the control plane's
event loop; `grpc_check_cluster`).

With `extAuthz.transport: http` an HTTP port's filter asks the engine's HTTP/1.1 authz port
instead (`TranslationContext.ext_authz_http_cluster`; tcp ports keep gRPC: Envoy's network filter
has no HTTP mode). The request to the engine is the client's method, `CHECK_PATH` + its path, its
host, the headers the workload's policies read, and the `RESERVED` headers the filter itself adds
from what Envoy verified — which override a client header of the same name (checked with Envoy
1.40), are never forwarded from the client, and always carry a value (`=` + the substitution,
so an empty one is still present) so the engine can require each exactly once.
"""

from __future__ import annotations

from typing import Any

from meshwarden.engine import Attribute, AuthorizationPlan, PatternCondition
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._envoy import extension
from meshwarden.xds._predicates import JWT_PAYLOAD_KEY

WORKLOAD_HEADER = "x-meshwarden-workload"  # gRPC initial metadata set by the filter config
PORT_HEADER = "x-meshwarden-port"
JWT_AUTHN_NS = "envoy.filters.http.jwt_authn"

# `extAuthz.transport: http`: what the filter adds to each request to the engine
CHECK_PATH = "/meshwarden.authz/check"  # path prefix: the client's path follows it
PEER_HEADER = "x-meshwarden-peer"  # `=` + the caller's verified URI SAN (`=` alone: none)
SOURCE_HEADER = "x-meshwarden-source"  # `=` + the direct peer address
JWT_HEADER = "x-meshwarden-jwt"  # `=` + the verified token's payload as JSON (`=` alone: none)
RESERVED_PREFIX = "x-meshwarden-"
RESERVED = (WORKLOAD_HEADER, PORT_HEADER, PEER_HEADER, SOURCE_HEADER, JWT_HEADER)
TRACE_HEADERS = ("traceparent", "tracestate")
VERDICT_HEADERS = ("decision", "policy", "rule", "dry_run_decision", "dry_run_policy")


def _duration(value: str) -> str:
    """`250ms` / `2s` (the model's spelling) → protobuf JSON duration."""
    if value.endswith("ms"):
        return f"{int(value[:-2]) / 1000:g}s"
    return f"{int(value[:-1])}s"


def grpc_check_cluster(workload: str, ctx: TranslationContext) -> str | None:
    """Where the sidecar of `workload` sends gRPC Check: the ext_authz front's h2 cluster when
    its bootstrap declared it, else `ext_authz_cluster` (the ADS connection)."""
    if ctx.ext_authz_grpc_cluster is not None and ctx.ext_authz_grpc_declared(workload):
        return ctx.ext_authz_grpc_cluster
    return ctx.ext_authz_cluster


def _grpc_service(plan: AuthorizationPlan, port: int, ctx: TranslationContext) -> dict[str, Any]:
    cluster = grpc_check_cluster(plan.workload.ref, ctx)
    if cluster is None:
        raise ValueError(f"{plan.workload.ref}: ext-authz enforcement needs ext_authz_cluster")
    metadata = [
        {"key": WORKLOAD_HEADER, "value": plan.workload.ref},
        {"key": PORT_HEADER, "value": str(port)},
    ]
    return {
        "envoyGrpc": {"clusterName": cluster},
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
    if plan.mesh.ext_authz.transport == "http":
        return _http_transport_filter(plan, port, ctx)
    return extension(
        "envoy.filters.http.ext_authz",
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        statusOnError={"code": "Forbidden"},
        metadataContextNamespaces=[JWT_AUTHN_NS],
        **_calling(plan, port, ctx),
    )


def condition_headers(plan: AuthorizationPlan) -> tuple[str, ...]:
    """The (lower-case) header names that some rule of the plan's policies reads."""
    names = {
        condition.key.argument
        for policy in (*plan.policies, *plan.dry_run)
        for rule in policy.rules
        for condition in rule.conditions
        if isinstance(condition, PatternCondition)
        and condition.key.attribute is Attribute.REQUEST_HEADER
    }
    return tuple(sorted(names))


def _patterns(names: tuple[str, ...]) -> dict[str, Any]:
    return {"patterns": [{"exact": name} for name in names]}


def _http_transport_filter(
    plan: AuthorizationPlan, port: int, ctx: TranslationContext
) -> dict[str, Any]:
    """The HTTP ext_authz filter asking the engine over HTTP/1.1 (see the module docstring)."""
    if ctx.ext_authz_http_cluster is None:
        raise ValueError(
            f"{plan.workload.ref}: extAuthz.transport http needs the control plane's ext_authz "
            "front (meshwarden server --ext-authz-listen)"
        )
    added = {
        WORKLOAD_HEADER: plan.workload.ref,
        PORT_HEADER: str(port),
        PEER_HEADER: "=%DOWNSTREAM_PEER_URI_SAN%",
        SOURCE_HEADER: "=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
        JWT_HEADER: f"=%DYNAMIC_METADATA({JWT_AUTHN_NS}:{JWT_PAYLOAD_KEY})%",
    }
    read = tuple(h for h in condition_headers(plan) if not h.startswith(RESERVED_PREFIX))
    service = {
        "serverUri": {
            "uri": "http://meshwarden-authz",
            "cluster": ctx.ext_authz_http_cluster,
            "timeout": _duration(plan.mesh.ext_authz.timeout),
        },
        "pathPrefix": CHECK_PATH,
        "authorizationRequest": {
            "headersToAdd": [{"key": key, "value": value} for key, value in added.items()]
        },
        "authorizationResponse": {
            "dynamicMetadataFromHeaders": _patterns(VERDICT_HEADERS),
            "allowedClientHeaders": _patterns(("content-type",)),
        },
    }
    return extension(
        "envoy.filters.http.ext_authz",
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        httpService=service,
        allowedHeaders=_patterns((*read, *TRACE_HEADERS)),
        statusOnError={"code": "Forbidden"},
        failureModeAllow=plan.mesh.ext_authz.fail_open,
        statPrefix="authz_",
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
