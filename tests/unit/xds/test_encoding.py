"""Encoding shares cached parts between resources and uses protobuf's upb codec; the bytes must
mean exactly what envoy-data-plane's independent (betterproto2) encoding of the whole resource
means, read back by that library."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from meshwarden.engine import load
from meshwarden.xds import TracingTarget
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._encode import ResourceEncoder
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshwarden.xds._translate import workload_resources

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
CONTEXTS = {
    "plain": TranslationContext(),
    "observed": TranslationContext(
        tracing=TracingTarget("127.0.0.1", 4317, sampling=10.0),
        flow_log_cluster="meshwarden-xds",
        ext_authz_cluster="meshwarden-xds",
    ),
}


# envoy-data-plane modules whose messages appear inside `Any` fields of our configs: importing
# them registers their types so betterproto2's `from_dict` resolves "@type".
TYPED_CONFIG_MODULES = (
    "envoy.config.rbac.v3",
    "envoy.extensions.filters.http.rbac.v3",
    "envoy.extensions.filters.network.rbac.v3",
    "envoy.extensions.filters.http.jwt_authn.v3",
    "envoy.extensions.filters.http.router.v3",
    "envoy.extensions.filters.network.http_connection_manager.v3",
    "envoy.extensions.filters.network.tcp_proxy.v3",
    "envoy.extensions.filters.listener.tls_inspector.v3",
    "envoy.extensions.transport_sockets.tls.v3",
    "envoy.extensions.matching.common_inputs.ssl.v3",
    "envoy.extensions.matching.common_inputs.network.v3",
    "envoy.extensions.matching.input_matchers.ip.v3",
    "envoy.extensions.matching.input_matchers.metadata.v3",
    "envoy.type.matcher.v3",
    "envoy.extensions.upstreams.http.v3",
    "envoy.extensions.filters.http.lua.v3",
    "envoy.extensions.common.matching.v3",
    "envoy.extensions.filters.common.matcher.action.v3",
    "envoy.config.trace.v3",
    "envoy.extensions.access_loggers.grpc.v3",
    "envoy.extensions.filters.http.ext_authz.v3",
    "envoy.extensions.filters.network.ext_authz.v3",
)


def betterproto_class(type_url: str) -> Any:
    for module in TYPED_CONFIG_MODULES:
        importlib.import_module("envoy_data_plane." + module)
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster
    from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment
    from envoy_data_plane.envoy.config.listener.v3 import Listener
    from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration

    classes = {
        CLUSTER: Cluster,
        ENDPOINT: ClusterLoadAssignment,
        LISTENER: Listener,
        ROUTE: RouteConfiguration,
    }
    return classes[type_url]


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("example", ["shop", "seed"])
def test_encoding_means_what_an_independent_encoder_makes_of_the_same_config(example, context):
    compiled = load([EXAMPLES / example]).compiled
    assert compiled is not None
    encoder = ResourceEncoder()
    checked = 0
    for ref in compiled.registry.workloads:
        for type_url, configs in workload_resources(compiled, ref, CONTEXTS[context]).items():
            for config in configs:
                name = config.get("name") or config["clusterName"]
                resource = encoder.encode(type_url, name, config)
                reference = betterproto_class(type_url)
                decoded = reference.parse(resource.body).to_dict()
                assert decoded == reference.parse(bytes(reference.from_dict(config))).to_dict()
                checked += 1
    assert checked >= 5


def test_an_unchanged_resource_is_not_encoded_again():
    compiled = load([EXAMPLES / "shop"]).compiled
    assert compiled is not None
    encoder = ResourceEncoder()
    resources = workload_resources(compiled, "shop/backend-1", TranslationContext())
    first = encoder.encode_all(resources)
    encoded = encoder.encoded
    again = encoder.encode_all(workload_resources(compiled, "shop/backend-1", TranslationContext()))
    assert encoder.encoded == encoded
    assert [r.body for r in again] == [r.body for r in first]
