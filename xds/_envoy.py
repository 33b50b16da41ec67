"""Envoy's vocabulary as a few small builders of JSON-shaped configs (as go-control-plane's
`resource` helpers): typed extensions, socket addresses, static clusters, endpoints, TLS
transport sockets and config sources. The translator composes resources from these instead of
repeating nested dicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Config = dict[str, Any]
TYPE_URL_PREFIX = "type.googleapis.com/"


def typed(type_name: str, **fields: Any) -> Config:
    """A `google.protobuf.Any` in JSON: `@type` and the message's fields."""
    return {"@type": TYPE_URL_PREFIX + type_name, **fields}


def extension(name: str, type_name: str, **fields: Any) -> Config:
    """A named extension (filter, transport socket, matcher input) with its typed config."""
    return {"name": name, "typedConfig": typed(type_name, **fields)}


def socket_address(address: str, port: int) -> Config:
    return {"socketAddress": {"address": address, "portValue": port}}


def load_assignment(cluster: str, addresses: Iterable[tuple[str, int]]) -> Config:
    """A ClusterLoadAssignment: one locality with an endpoint per (address, port)."""
    endpoints = [{"endpoint": {"address": socket_address(a, p)}} for a, p in addresses]
    return {"clusterName": cluster, "endpoints": [{"lbEndpoints": endpoints}]}


def static_cluster(
    name: str, address: str, port: int, *, kind: str = "STATIC", connect_timeout: str = "1s"
) -> Config:
    """A cluster of one endpoint (`kind` STATIC for an IP, STRICT_DNS for a host name)."""
    return {
        "name": name,
        "type": kind,
        "connectTimeout": connect_timeout,
        "loadAssignment": load_assignment(name, [(address, port)]),
    }


_TLS = "envoy.transport_sockets.tls"
_TLS_TYPES = "envoy.extensions.transport_sockets.tls.v3."


def upstream_tls(**fields: Any) -> Config:
    """The TLS transport socket of a cluster (UpstreamTlsContext)."""
    return extension(_TLS, _TLS_TYPES + "UpstreamTlsContext", **fields)


def downstream_tls(**fields: Any) -> Config:
    """The TLS transport socket of a filter chain (DownstreamTlsContext)."""
    return extension(_TLS, _TLS_TYPES + "DownstreamTlsContext", **fields)


def ads_source() -> Config:
    """A ConfigSource: over the ADS stream the sidecar already has."""
    return {"ads": {}, "resourceApiVersion": "V3"}


def grpc_source(cluster: str) -> Config:
    """A ConfigSource: a gRPC API on a cluster of the bootstrap (SDS, for instance)."""
    service = {"envoyGrpc": {"clusterName": cluster}}
    api = {"apiType": "GRPC", "transportApiVersion": "V3", "grpcServices": [service]}
    return {"resourceApiVersion": "V3", "apiConfigSource": api}


def tcp_proxy(stat_prefix: str, cluster: str, **fields: Any) -> Config:
    """The tcp_proxy network filter to `cluster`."""
    return extension(
        "envoy.filters.network.tcp_proxy",
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        statPrefix=stat_prefix,
        cluster=cluster,
        **fields,
    )


def router() -> Config:
    """The router HTTP filter (last in every HCM)."""
    return extension("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router")


def allowed_sample(percent: float) -> Config:
    """An access-log filter passing `percent` of the entries (`--flow-log-sample`)."""
    return {
        "runtimeFilter": {
            "runtimeKey": "meshwarden.flow_log.allowed_sampling",
            "useIndependentRandomness": True,
            "percentSampled": {"numerator": round(percent * 100), "denominator": "TEN_THOUSAND"},
        }
    }
