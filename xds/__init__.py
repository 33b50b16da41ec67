"""meshwarden.xds: the xDS side — ADS (state of the world and delta) from per-node snapshots,
SDS for the local Envoy, and the translation of compiled plans into Envoy resources."""

from meshwarden.xds._ads import AggregatedDiscovery, ads_handler
from meshwarden.xds._bootstrap import bootstrap, envoy_binary
from meshwarden.xds._cache import NodeStatus, SnapshotCache
from meshwarden.xds._encode import ResourceEncoder
from meshwarden.xds._node_auth import (
    peer_spiffe_id,
    registry_authorizer,
    relayed_peer_spiffe_id,
    workload_authorizer,
)
from meshwarden.xds._publisher import SnapshotBuilder
from meshwarden.xds._sds import sds_handler
from meshwarden.xds._snapshot import ConfigWatcher, Resource, Snapshot
from meshwarden.xds._translate import StaticTls, TranslationContext, workload_resources

__all__ = [
    "AggregatedDiscovery",
    "ConfigWatcher",
    "NodeStatus",
    "Resource",
    "ResourceEncoder",
    "Snapshot",
    "SnapshotBuilder",
    "SnapshotCache",
    "StaticTls",
    "TranslationContext",
    "ads_handler",
    "bootstrap",
    "envoy_binary",
    "peer_spiffe_id",
    "registry_authorizer",
    "relayed_peer_spiffe_id",
    "sds_handler",
    "workload_authorizer",
    "workload_resources",
]
