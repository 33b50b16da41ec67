"""State-of-the-world requests and responses read and written at the wire level mean what
envoy-data-plane (an independent codec) reads and writes for the same messages."""

from __future__ import annotations

from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.google.protobuf import Struct
from envoy_data_plane.google.rpc import Status
from hypothesis import given, settings
from hypothesis import strategies as st
from meshwarden.xds._discovery_wire import parse_discovery_request, serialize_discovery_response

TEXT = st.text(max_size=40)
SCALARS = st.booleans() | TEXT | st.floats(allow_nan=False) | st.none()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
METADATA = st.none() | st.dictionaries(TEXT, VALUES, max_size=4).map(Struct.from_dict)
NODES = st.none() | st.builds(Node, id=TEXT, cluster=TEXT, metadata=METADATA)
ERRORS = st.none() | st.builds(Status, code=st.integers(-(2**31), 2**31 - 1), message=TEXT)
REQUESTS = st.builds(
    DiscoveryRequest,
    version_info=TEXT,
    node=NODES,
    resource_names=st.lists(TEXT, max_size=4),
    type_url=TEXT,
    response_nonce=TEXT,
    error_detail=ERRORS,
)
ANYS = st.builds(AnyMessage, type_url=TEXT, value=st.binary(max_size=300))
RESPONSES = st.builds(
    DiscoveryResponse,
    version_info=TEXT,
    resources=st.lists(ANYS, max_size=5),
    type_url=TEXT,
    nonce=TEXT,
)


@settings(deadline=None)  # envoy-data-plane's pure-Python codec is slow on a loaded machine
@given(REQUESTS)
def test_a_request_reads_as_envoy_data_plane_reads_it(request: DiscoveryRequest) -> None:
    wire = bytes(request)
    assert parse_discovery_request(wire) == DiscoveryRequest.parse(wire)


@settings(deadline=None)
@given(RESPONSES)
def test_a_response_reads_back_as_the_message_written(response: DiscoveryResponse) -> None:
    assert DiscoveryResponse.parse(serialize_discovery_response(response)) == response


def test_a_request_from_envoy_keeps_the_node_id_among_its_other_node_fields() -> None:
    node = Node(id="shop/web-1", cluster="shop", user_agent_name="envoy")
    request = DiscoveryRequest(node=node, type_url="t", resource_names=["a", "b"])
    parsed = parse_discovery_request(bytes(request))
    assert parsed.node == Node(id="shop/web-1", cluster="shop")
    assert parsed.resource_names == ["a", "b"] and parsed.type_url == "t"


def test_a_nodes_metadata_is_read_for_what_its_bootstrap_declares() -> None:
    metadata = Struct.from_dict({"meshwarden.ext_authz_http": True, "zone": "a"})
    parsed = parse_discovery_request(
        bytes(DiscoveryRequest(node=Node(id="a/b", metadata=metadata)))
    )
    assert parsed.node is not None and parsed.node.metadata == metadata
