"""A sidecar bootstrapped without `--ext-authz-http-port` for a workload whose Mesh asks for
`extAuthz.transport: http` has no route to the engine's HTTP front: its Envoy accepts the
configuration, then fails every request closed. The control plane tells it from the node
metadata the bootstrap declares on the ADS stream and reports it on /healthz (`degraded`,
`sidecarProblems`) while that sidecar is connected; a sidecar bootstrapped with the port is
not reported."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshwarden.identities import SERVER_DNS_NAME
from meshwarden.xds import CLUSTER, bootstrap

from .harness import wait_for
from .test_node_attestation import API, Plane, running_plane
from .test_xds_listener import ADS, _svid

POLICIES = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: example.org, enforcement: ext-authz, extAuthz: {transport: http}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: api, namespace: shop}
spec:
  selectors: ["unix:uid:0"]
  addresses: [127.0.0.1]
  ports: [{port: 8080, protocol: http}]
"""


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path, POLICIES, ext_authz_http_listen="127.0.0.1:0") as running:
        yield running


def _node(http_port: int | None) -> Node:
    """The node a sidecar started from `meshwarden bootstrap` sends on its first request."""
    config = bootstrap(
        "shop/api",
        "127.0.0.1",
        8444,
        "/sds.sock",
        trust_domain="example.org",
        ext_authz_http_port=http_port,
    )
    return Node.from_dict(config["node"])


class _OpenStream:
    """An ADS stream as `node`, held open (after its first response) until the block ends."""

    def __init__(self, plane: Plane, node: Node) -> None:
        self.plane, self.node = plane, node
        self._done = threading.Event()

    def _requests(self) -> Iterator[DiscoveryRequest]:
        yield DiscoveryRequest(node=self.node, type_url=CLUSTER)
        self._done.wait(30)

    def __enter__(self) -> DiscoveryResponse:
        key, chain = _svid(self.plane, API)
        credentials = grpc.ssl_channel_credentials(self.plane.roots, key, chain)
        options = [("grpc.ssl_target_name_override", SERVER_DNS_NAME)]
        self._channel = grpc.secure_channel(self.plane.plane.xds_address, credentials, options)
        call = self._channel.stream_stream(
            ADS, request_serializer=bytes, response_deserializer=DiscoveryResponse.parse
        )
        return next(iter(call(self._requests(), timeout=30)))

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._channel.close()


def _health(plane: Plane) -> dict:
    return plane.loop.call(plane.plane.status_report)


def test_a_sidecar_without_the_http_fronts_cluster_is_reported_while_connected(
    plane: Plane,
) -> None:
    with _OpenStream(plane, _node(None)):
        health = _health(plane)
        assert health["status"] == "degraded"
        problem = health["sidecarProblems"]["shop/api"]
        assert "--ext-authz-port" in problem and "fails closed" in problem
    wait_for(lambda: "sidecarProblems" not in _health(plane))  # gone once it disconnects
    assert _health(plane)["status"] == "ok"


def test_a_sidecar_bootstrapped_with_the_port_is_not_reported(plane: Plane) -> None:
    port = plane.plane.ext_authz_http_port
    assert port is not None
    with _OpenStream(plane, _node(port)) as first:
        assert first.type_url == CLUSTER
        health = _health(plane)
        assert "sidecarProblems" not in health and health["status"] == "ok"
