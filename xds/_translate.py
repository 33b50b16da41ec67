"""One workload's compiled plan → its sidecar's Envoy resources (as JSON-shaped dicts).

Per workload port an inbound listener on the workload address: TLS that requires a client
certificate validated by Envoy's SPIFFE validator against the trust bundle from SDS (and under
PERMISSIVE a second, plaintext chain selected by tls_inspector where only the IP fallback layer
can match); HTTP ports get an HCM with jwt_authn, the RBAC filters and a router to
127.0.0.1:targetPort; tcp ports network RBAC and tcp_proxy. Per `upstreams` entry an outbound
listener on 127.0.0.1:localPort → an EDS cluster of the service's workloads that the source's
egress policies let it reach, with mTLS using the workload's own SVID and verifying the server's
SPIFFE ID (one of theirs); an upstream egress denies entirely is closed by a named RBAC filter.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from meshwarden.engine import CompiledMesh, Workload, WorkloadPort
from meshwarden.xds._access_log import http_access_logs, tcp_access_logs
from meshwarden.xds._context import StaticTls, TranslationContext
from meshwarden.xds._egress import egress_rbac_filter, upstream_egress
from meshwarden.xds._egress_log import egress_access_logs, egress_load_assignment
from meshwarden.xds._encode import SharedConfig
from meshwarden.xds._envoy import (
    ads_source,
    downstream_tls,
    extension,
    grpc_source,
    router,
    socket_address,
    static_cluster,
    tcp_proxy,
    typed,
    upstream_tls,
)
from meshwarden.xds._ext_authz_filter import ext_authz_http_filter, ext_authz_network_filter
from meshwarden.xds._jwt_authn import jwks_clusters, jwt_authn_filter
from meshwarden.xds._rbac import InboundRbac
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshwarden.xds._tracing import (
    decision_tags_filter,
    hcm_tracing,
    policy_version,
    tracing_clusters,
)

ROOTCA = "ROOTCA"
DEFAULT_SECRET = "default"


def _sds(name: str, cluster: str) -> dict[str, Any]:
    return {"name": name, "sdsConfig": grpc_source(cluster)}


def _static_tls(files: StaticTls, validation: dict[str, Any] | None) -> dict[str, Any]:
    domain = {"name": files.trust_domain, "trustBundle": {"filename": files.trust_bundle}}
    spiffe = extension(
        "envoy.tls.cert_validator.spiffe",
        "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
        trustDomains=[domain],
    )
    certificate = {
        "certificateChain": {"filename": files.certificate_chain},
        "privateKey": {"filename": files.private_key},
    }
    return {
        "tlsCertificates": [certificate],
        "tlsParams": {"tlsMinimumProtocolVersion": "TLSv1_2"},
        "validationContext": {**(validation or {}), "customValidatorConfig": spiffe},
    }


def _common_tls(
    static_tls: StaticTls | None, sds_cluster: str, validation: dict[str, Any] | None = None
) -> dict[str, Any]:
    if static_tls is not None:
        return _static_tls(static_tls, validation)
    common: dict[str, Any] = {
        "tlsCertificateSdsSecretConfigs": [_sds(DEFAULT_SECRET, sds_cluster)],
        "tlsParams": {"tlsMinimumProtocolVersion": "TLSv1_2"},
    }
    if validation is None:
        common["validationContextSdsSecretConfig"] = _sds(ROOTCA, sds_cluster)
    else:
        common["combinedValidationContext"] = {
            "defaultValidationContext": validation,
            "validationContextSdsSecretConfig": _sds(ROOTCA, sds_cluster),
        }
    return common


@functools.lru_cache(maxsize=16)
def _downstream_tls(static_tls: StaticTls | None, sds_cluster: str) -> SharedConfig:
    """The inbound mTLS transport socket: the same for every workload (its SVID comes by SDS),
    so one shared object, encoded once."""
    return SharedConfig(
        downstream_tls(
            requireClientCertificate=True,
            disableStatelessSessionResumption=True,
            disableStatefulSessionResumption=True,
            commonTlsContext=_common_tls(static_tls, sds_cluster),
        )
    )


def _local_cluster(workload: Workload, port: WorkloadPort) -> str:
    return f"local:{workload.ref}:{port.port}"


def _http_filters(
    mesh: CompiledMesh,
    workload: Workload,
    port: WorkloadPort,
    identified: bool,
    ctx: TranslationContext,
    rbac: InboundRbac,
) -> list[dict[str, Any]]:
    plan = mesh.plan(workload.ref)
    filters: list[dict[str, Any]] = []
    jwt = jwt_authn_filter(plan.jwt_issuers, ctx)
    if jwt:
        filters.append(jwt)
    if plan.enforcement == "ext-authz":
        filters.append(ext_authz_http_filter(plan, port.port, identified, ctx))
    else:
        filters.extend(rbac.filters(plan, port.port, identified, http=True))
    filters.append(_ROUTER)
    return filters


def _hcm(
    mesh: CompiledMesh,
    workload: Workload,
    port: WorkloadPort,
    identified: bool,
    ctx: TranslationContext,
    rbac: InboundRbac,
) -> dict[str, Any]:
    filters = _http_filters(mesh, workload, port, identified, ctx, rbac)
    hcm = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        statPrefix=f"in_{port.port}",
        codecType="AUTO",
        normalizePath=True,
        mergeSlashes=True,
        pathWithEscapedSlashesAction="KEEP_UNCHANGED",
        useRemoteAddress=False,
        **_routing(workload, port, ctx),
    )
    if ctx.tracing is not None:
        version = policy_version(mesh, workload.ref)
        hcm["tracing"] = hcm_tracing(ctx.tracing, workload.ref, port.port, version)
        filters.insert(0, decision_tags_filter())
    access_logs = http_access_logs(ctx, workload.ref, port.port)
    if access_logs:
        hcm["accessLog"] = access_logs
    hcm["httpFilters"] = filters
    return {"name": "envoy.filters.network.http_connection_manager", "typedConfig": hcm}


def _routing(workload: Workload, port: WorkloadPort, ctx: TranslationContext) -> dict[str, Any]:
    if ctx.inline_routes:
        return {"routeConfig": _route(workload, port)}
    return {"rds": {"routeConfigName": inbound_route_name(port), "configSource": ads_source()}}


def _tcp_filters(
    mesh: CompiledMesh,
    workload: Workload,
    port: WorkloadPort,
    identified: bool,
    ctx: TranslationContext,
    rbac: InboundRbac,
) -> list[dict[str, Any]]:
    plan = mesh.plan(workload.ref)
    if plan.enforcement == "ext-authz":
        filters = [ext_authz_network_filter(plan, port.port, identified, ctx)]
    else:
        filters = list(rbac.filters(plan, port.port, identified, http=False))
    access_logs = tcp_access_logs(ctx, workload.ref, port.port)
    logging = {"accessLog": access_logs} if access_logs else {}
    filters.append(tcp_proxy(f"in_{port.port}", _local_cluster(workload, port), **logging))
    return filters


def inbound_route_name(port: WorkloadPort) -> str:
    return f"in:{port.port}"


def _chain(
    mesh: CompiledMesh,
    workload: Workload,
    port: WorkloadPort,
    identified: bool,
    ctx: TranslationContext,
    rbac: InboundRbac,
) -> dict[str, Any]:
    filters = (
        [_hcm(mesh, workload, port, identified, ctx, rbac)]
        if port.is_http
        else _tcp_filters(mesh, workload, port, identified, ctx, rbac)
    )
    chain: dict[str, Any] = {"filters": filters}
    if identified:
        chain["transportSocket"] = _downstream_tls(ctx.static_tls, ctx.sds_cluster)
        chain["filterChainMatch"] = {"transportProtocol": "tls"}
        chain["name"] = "mtls"
    else:
        chain["filterChainMatch"] = {"transportProtocol": "raw_buffer"}
        chain["name"] = "plaintext"
    return chain


def inbound_listeners(
    mesh: CompiledMesh, workload: Workload, ctx: TranslationContext, rbac: InboundRbac
) -> list[dict[str, Any]]:
    """The workload's inbound listeners; their RBAC filters come from `rbac` (shared with the
    workloads whose plans are equal)."""
    listeners = []
    for address in workload.addresses[:1]:
        for port in sorted(workload.ports.values(), key=lambda p: p.port):
            chains = [_chain(mesh, workload, port, True, ctx, rbac)]
            if not mesh.plan(workload.ref).mtls(port.port).strict:
                chains.append(_chain(mesh, workload, port, False, ctx, rbac))
            listeners.append(
                {
                    "name": f"in:{port.port}",
                    "address": socket_address(str(address), port.port),
                    # Never share a port with another process silently: a second sidecar bound
                    # to the same address:port must fail loudly, not take half of the connections.
                    "enableReusePort": False,
                    "listenerFilters": [_TLS_INSPECTOR],
                    "filterChains": chains,
                }
            )
    return listeners


_TLS_INSPECTOR = SharedConfig(
    extension(
        "envoy.filters.listener.tls_inspector",
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    )
)
_ROUTER = SharedConfig(router())


def _route(workload: Workload, port: WorkloadPort) -> dict[str, Any]:
    return {
        "name": inbound_route_name(port),
        "virtualHosts": [
            {
                "name": "local",
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": _local_cluster(workload, port)}}
                ],
            }
        ],
    }


def inbound_routes(workload: Workload) -> list[dict[str, Any]]:
    return [_route(workload, port) for port in workload.ports.values() if port.is_http]


def local_clusters(workload: Workload) -> list[dict[str, Any]]:
    return [
        static_cluster(_local_cluster(workload, port), "127.0.0.1", port.target_port or port.port)
        for port in workload.ports.values()
    ]


def outbound_cluster_name(service: str, port: int) -> str:
    return f"out:{service}:{port}"


Configs = list[dict[str, Any]]


def outbound(
    mesh: CompiledMesh, workload: Workload, ctx: TranslationContext
) -> tuple[Configs, Configs, Configs]:
    """(listeners, clusters, endpoints) for the workload's `upstreams`."""
    listeners, clusters, endpoints = [], [], []
    for upstream in workload.spec.upstreams:
        service = mesh.registry.services[upstream.service]
        name = outbound_cluster_name(upstream.service, upstream.port)
        members = [
            mesh.registry.workloads[ref]
            for ref in sorted(
                mesh.registry.select(service.metadata.namespace, service.spec.selector)
            )
        ]
        serving = [w for w in members if w.addresses and upstream.port in w.ports]
        egress = upstream_egress(mesh, workload, upstream.port, serving)
        sans = [
            {"sanType": "URI", "matcher": {"exact": w.identity}}
            for w in {w.identity: w for w in egress.allowed}.values()
        ]
        validation = {"matchTypedSubjectAltNames": sans} if sans else None
        clusters.append(
            {
                "name": name,
                "type": "EDS",
                "connectTimeout": "2s",
                "edsClusterConfig": {"edsConfig": ads_source()},
                "transportSocket": upstream_tls(
                    commonTlsContext=_common_tls(ctx.static_tls, ctx.sds_cluster, validation)
                ),
            }
        )
        endpoints.append(egress_load_assignment(name, egress, upstream.port))
        logs = egress_access_logs(ctx, workload, upstream.service, upstream.port, egress)
        logging = {"accessLog": logs} if logs else {}
        filters = [tcp_proxy(f"out_{upstream.local_port}", name, **logging)]
        rbac = egress_rbac_filter(egress)
        if rbac is not None:
            filters.insert(0, rbac)
        listeners.append(
            {
                "name": f"out:{upstream.local_port}",
                "enableReusePort": False,
                "address": socket_address("127.0.0.1", upstream.local_port),
                "filterChains": [{"filters": filters}],
            }
        )
    return listeners, clusters, endpoints


def workload_resources(
    mesh: CompiledMesh, ref: str, ctx: TranslationContext
) -> dict[str, list[dict[str, Any]]]:
    """Every resource of one workload's sidecar, by type URL."""
    workload = mesh.registry.workloads[ref]
    inbound = inbound_listeners(mesh, workload, ctx, InboundRbac())
    out_listeners, out_clusters, out_endpoints = outbound(mesh, workload, ctx)
    return {
        CLUSTER: local_clusters(workload)
        + jwks_clusters(mesh, workload)
        + out_clusters
        + tracing_clusters(ctx.tracing),
        ENDPOINT: out_endpoints,
        LISTENER: inbound + out_listeners,
        ROUTE: inbound_routes(workload),
    }


def wiring_resources(
    mesh: CompiledMesh, ref: str, ctx: TranslationContext
) -> dict[str, list[dict[str, Any]]]:
    """The part of `workload_resources` built from the registry, the workload's egress plan and
    `ctx` alone (local and outbound clusters, endpoints, outbound listeners, routes): an
    AuthorizationPolicy or JwtIssuer change leaves it as it was."""
    workload = mesh.registry.workloads[ref]
    out_listeners, out_clusters, out_endpoints = outbound(mesh, workload, ctx)
    return {
        CLUSTER: local_clusters(workload) + out_clusters + tracing_clusters(ctx.tracing),
        ENDPOINT: out_endpoints,
        LISTENER: out_listeners,
        ROUTE: inbound_routes(workload),
    }


def plan_resources(
    mesh: CompiledMesh, ref: str, ctx: TranslationContext, rbac: InboundRbac
) -> dict[str, list[dict[str, Any]]]:
    """The rest of `workload_resources`: what the workload's authorization plan and issuers
    decide (inbound listeners, JWKS clusters). `rbac` shares the inbound RBAC filters between
    workloads with equal plans."""
    workload = mesh.registry.workloads[ref]
    return {
        CLUSTER: jwks_clusters(mesh, workload),
        LISTENER: inbound_listeners(mesh, workload, ctx, rbac),
    }


def canonical(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))
