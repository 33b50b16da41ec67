"""meshwarden.xds: the xDS side — ADS (state of the world and delta) from per-node snapshots,
SDS for the local Envoy, the translation of compiled plans into Envoy resources, and the
receivers of what sidecars report (access logs, ext_authz Check calls)."""

from meshwarden.xds._access_log import AccessLogReceiver, Flow, TcpAttribution, access_log_handler
from meshwarden.xds._ads import AggregatedDiscovery, ads_handler
from meshwarden.xds._bootstrap import (
    EXT_AUTHZ_GRPC_CLUSTER,
    EXT_AUTHZ_HTTP_CLUSTER,
    EXT_AUTHZ_HTTP_IDLE_SECONDS,
    XDS_CLUSTER,
    bootstrap,
    envoy_binary,
    ext_authz_grpc_declared,
    ext_authz_http_declared,
    replica_order,
)
from meshwarden.xds._cache import SnapshotCache
from meshwarden.xds._context import StaticTls, TranslationContext
from meshwarden.xds._decisions import Verdict, verdict_of
from meshwarden.xds._egress_log import EgressEnds
from meshwarden.xds._encode import ResourceEncoder
from meshwarden.xds._ext_authz import (
    Authorization,
    authorization_handler,
    registered_workload,
)
from meshwarden.xds._ext_authz_http import (
    EXT_AUTHZ_FRONT_IDLE_SECONDS,
    AuthzHttpFront,
    front_tls,
    serve_authz_http,
)
from meshwarden.xds._loopback import (
    loopback_cluster,
    serve_http_on_loopback,
    serve_on_loopback,
)
from meshwarden.xds._node_auth import (
    peer_certificate,
    peer_spiffe_id,
    registry_authorizer,
    workload_authorizer,
)
from meshwarden.xds._observability import TelemetryObserver
from meshwarden.xds._publisher import SnapshotBuilder
from meshwarden.xds._sds import sds_handler
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot
from meshwarden.xds._status import SidecarSync, SyncState, sidecar_sync
from meshwarden.xds._tracing import TracingTarget
from meshwarden.xds._translate import workload_resources

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "EXT_AUTHZ_FRONT_IDLE_SECONDS",
    "EXT_AUTHZ_GRPC_CLUSTER",
    "EXT_AUTHZ_HTTP_CLUSTER",
    "EXT_AUTHZ_HTTP_IDLE_SECONDS",
    "LISTENER",
    "ROUTE",
    "XDS_CLUSTER",
    "AccessLogReceiver",
    "AggregatedDiscovery",
    "Authorization",
    "AuthzHttpFront",
    "EgressEnds",
    "Flow",
    "ResourceEncoder",
    "SidecarSync",
    "Snapshot",
    "SnapshotBuilder",
    "SnapshotCache",
    "StaticTls",
    "SyncState",
    "TcpAttribution",
    "TelemetryObserver",
    "TracingTarget",
    "TranslationContext",
    "Verdict",
    "access_log_handler",
    "ads_handler",
    "authorization_handler",
    "bootstrap",
    "envoy_binary",
    "ext_authz_grpc_declared",
    "ext_authz_http_declared",
    "front_tls",
    "loopback_cluster",
    "peer_certificate",
    "peer_spiffe_id",
    "registered_workload",
    "registry_authorizer",
    "replica_order",
    "sds_handler",
    "serve_authz_http",
    "serve_http_on_loopback",
    "serve_on_loopback",
    "sidecar_sync",
    "verdict_of",
    "workload_authorizer",
    "workload_resources",
]
