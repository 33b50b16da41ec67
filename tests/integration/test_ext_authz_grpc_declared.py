"""Where a sidecar's gRPC Check goes (a control plane serving the ext_authz front): a sidecar
whose bootstrap has the front (`bootstrap(..., ext_authz_http_port=...)`, node metadata
`meshwarden.ext_authz_grpc`) gets ext_authz filters — HTTP port and tcp port — naming the
front's h2 cluster; one bootstrapped without it (an older bootstrap) keeps the ADS cluster, and
so does the same workload when its sidecar comes back with such a bootstrap. Each from its
stream's first response: a sidecar is never sent the configuration of the other bootstrap."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import ExtAuthz as HttpExtAuthz
from envoy_data_plane.envoy.extensions.filters.network.ext_authz.v3 import (
    ExtAuthz as NetworkExtAuthz,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
)
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshwarden.identities import SERVER_DNS_NAME
from meshwarden.xds import EXT_AUTHZ_GRPC_CLUSTER, LISTENER, XDS_CLUSTER, bootstrap

from .test_ext_authz_http_declared import _node
from .test_node_attestation import API, Plane, running_plane
from .test_xds_listener import ADS, _svid

POLICIES = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: example.org, enforcement: ext-authz}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: api, namespace: shop}
spec:
  selectors: ["unix:uid:0"]
  addresses: [127.0.0.1]
  ports: [{port: 8080, protocol: http}, {port: 9000, protocol: tcp}]
"""


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path, POLICIES, ext_authz_http_listen="127.0.0.1:0") as running:
        yield running


def _check_clusters(response: DiscoveryResponse) -> set[str]:
    """The clusters the listeners' ext_authz filters (HTTP and network) send Check to."""
    found = set()
    for resource in response.resources:
        for chain in Listener.parse(resource.value).filter_chains:
            for network in chain.filters:
                found.update(_in_filter(network.typed_config))
    return found


def _in_filter(config: Any) -> list[str]:
    if config.type_url.endswith("network.ext_authz.v3.ExtAuthz"):
        return [_cluster(NetworkExtAuthz.parse(config.value).grpc_service)]
    if not config.type_url.endswith("HttpConnectionManager"):
        return []
    return [
        _cluster(HttpExtAuthz.parse(http.typed_config.value).grpc_service)
        for http in HttpConnectionManager.parse(config.value).http_filters
        if http.typed_config.type_url.endswith("http.ext_authz.v3.ExtAuthz")
    ]


def _cluster(service: Any) -> str:
    return str(service.envoy_grpc.cluster_name)


def _listeners_until(plane: Plane, node: Node, wanted: set[str]) -> list[set[str]]:
    """The check clusters of each LDS response on one ADS stream as `node` (ACKing each),
    until they are `wanted` (at most 20 responses or 30 s)."""
    key, chain = _svid(plane, API)
    credentials = grpc.ssl_channel_credentials(plane.roots, key, chain)
    options = [("grpc.ssl_target_name_override", SERVER_DNS_NAME)]
    requests: queue.Queue[DiscoveryRequest | None] = queue.Queue()
    requests.put(DiscoveryRequest(node=node, type_url=LISTENER))

    def sent() -> Iterator[DiscoveryRequest]:
        while (request := requests.get(timeout=30)) is not None:
            yield request

    seen: list[set[str]] = []
    with grpc.secure_channel(plane.plane.xds_address, credentials, options) as channel:
        call = channel.stream_stream(
            ADS, request_serializer=bytes, response_deserializer=DiscoveryResponse.parse
        )
        responses = call(sent(), timeout=30)
        try:
            for response in responses:
                seen.append(_check_clusters(response))
                if seen[-1] == wanted or len(seen) >= 20:
                    break
                ack = DiscoveryRequest(
                    type_url=LISTENER,
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                )
                requests.put(ack)
        finally:
            requests.put(None)
            responses.cancel()
    return seen


def _declared_grpc(plane: Plane) -> Any:
    return plane.loop.call(lambda: plane.plane.xds.cache.status("shop/api").ext_authz_grpc)


def test_only_a_sidecar_bootstrapped_with_the_front_sends_grpc_check_there(plane: Plane) -> None:
    front = plane.plane.ext_authz_http_port
    assert front is not None
    old = _listeners_until(plane, _node(None), {XDS_CLUSTER})
    assert old == [{XDS_CLUSTER}]  # both filters ask over the ADS connection, as before
    # from the first response on (it waits for the workload's rebuild): the HTTP port's
    # filter and the tcp port's ask the front
    new = _listeners_until(plane, _node(front), {EXT_AUTHZ_GRPC_CLUSTER})
    assert new == [{EXT_AUTHZ_GRPC_CLUSTER}]
    assert _declared_grpc(plane) is True
    again = _listeners_until(plane, _node(None), {XDS_CLUSTER})  # an old bootstrap again
    assert again == [{XDS_CLUSTER}]


def test_bootstraps_with_the_front_have_its_h2_cluster_and_declare_it() -> None:
    config = bootstrap(
        "shop/api", "10.0.0.1", 8444, "/sds.sock", trust_domain="example.org", ext_authz_http_port=9
    )
    clusters = {c["name"]: c for c in config["staticResources"]["clusters"]}
    grpc_front = clusters[EXT_AUTHZ_GRPC_CLUSTER]
    endpoints = grpc_front["loadAssignment"]["endpoints"][0]["lbEndpoints"]
    assert [e["endpoint"]["address"]["socketAddress"] for e in endpoints] == [
        {"address": "10.0.0.1", "portValue": 9}
    ]
    tls = grpc_front["transportSocket"]["typedConfig"]["commonTlsContext"]
    assert tls["alpnProtocols"] == ["h2"]
    options = grpc_front["typedExtensionProtocolOptions"]
    assert "http2ProtocolOptions" in json.dumps(options)
    assert config["node"]["metadata"]["meshwarden.ext_authz_grpc"] is True
    without = bootstrap("shop/api", "10.0.0.1", 8444, "/sds.sock", trust_domain="example.org")
    assert EXT_AUTHZ_GRPC_CLUSTER not in json.dumps(without)
    assert "metadata" not in without["node"]
