"""Access-log entries (built with envoy-data-plane's classes, real wire format) → flows; the
config the sidecars get; the gRPC receiver binds a stream to the workload its mTLS proves."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    Metadata,
    Node,
    RequestMethod,
    SocketAddress,
)
from envoy_data_plane.envoy.data.accesslog.v3 import (
    AccessLogCommon,
    HttpAccessLogEntry,
    HttpRequestProperties,
    HttpResponseProperties,
    TcpAccessLogEntry,
    TlsProperties,
    TlsPropertiesCertificateProperties,
    TlsPropertiesCertificatePropertiesSubjectAltName,
)
from envoy_data_plane.envoy.extensions.access_loggers.grpc.v3 import (
    HttpGrpcAccessLogConfig,
    TcpGrpcAccessLogConfig,
)
from envoy_data_plane.envoy.service.accesslog.v3 import (
    StreamAccessLogsMessage,
    StreamAccessLogsMessageHttpAccessLogEntries,
    StreamAccessLogsMessageIdentifier,
    StreamAccessLogsMessageTcpAccessLogEntries,
)
from envoy_data_plane.google.protobuf import Struct
from meshwarden.xds import TranslationContext, workload_authorizer
from meshwarden.xds import _wire as wire
from meshwarden.xds._access_log import (
    SERVICE,
    AccessLogReceiver,
    Flow,
    access_log_handler,
    http_access_logs,
    http_flow,
    tcp_access_logs,
    tcp_flow,
)
from meshwarden.xds._decisions import EXT_AUTHZ_NS, RBAC_NS, Verdict

BACKEND = "shop/backend-1"
BACKEND_ID = "spiffe://td/ns/shop/sa/backend-1"
FRONTEND_ID = "spiffe://td/ns/shop/sa/frontend-1"
TRACE = "0af7651916cd43dd8448eb211c80319c"
STARTED = dt.datetime(2026, 11, 26, 12, 0, 0, 250_000, tzinfo=dt.UTC)
ALLOWED = {
    "authz_deny_enforced_engine_result": "allowed",
    "authz_deny_enforced_effective_policy_id": "allow:no-deny-rule",
    "authz_allow_enforced_engine_result": "allowed",
    "authz_allow_enforced_effective_policy_id": "shop/backend-access#2",
}


def _address(ip: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=ip, port_value=port))


def common(
    identity: str | None = FRONTEND_ID,
    metadata: dict[str, Any] | None = None,
    ip: str = "10.0.0.7",
    **more: Any,
) -> AccessLogCommon:
    tls = None
    if identity is not None:
        san = TlsPropertiesCertificatePropertiesSubjectAltName(uri=identity)
        tls = TlsProperties(
            peer_certificate_properties=TlsPropertiesCertificateProperties(subject_alt_name=[san])
        )
    filters = {ns: Struct.from_dict(fields) for ns, fields in (metadata or {}).items()}
    return AccessLogCommon(
        downstream_remote_address=_address("192.0.2.1", 1),
        tls_properties=tls,
        downstream_direct_remote_address=_address(ip, 41000),
        downstream_local_address=_address("10.0.0.3", 8080),
        start_time=STARTED,
        metadata=Metadata(filter_metadata=filters),
        **more,
    )


def http_entry(
    path: str = "/api/items",
    status: int = 200,
    method: str = "GET",
    traceparent: str | None = f"00-{TRACE}-b7ad6b7169203331-01",
    **kwargs: Any,
) -> HttpAccessLogEntry:
    headers = {"traceparent": traceparent} if traceparent else {}
    return HttpAccessLogEntry(
        common_properties=common(**kwargs),
        request=HttpRequestProperties(
            request_method=RequestMethod[method], path=path, request_headers=headers
        ),
        response=HttpResponseProperties(response_code=status, response_code_details="x"),
    )


def test_an_allowed_request_names_its_source_policy_rule_and_trace() -> None:
    flow = http_flow(bytes(http_entry(metadata={RBAC_NS: ALLOWED})), BACKEND)
    assert flow == Flow(
        STARTED.timestamp(),
        BACKEND,
        8080,
        FRONTEND_ID,
        "10.0.0.7",
        "http",
        "GET",
        "/api/items",
        200,
        Verdict("allow", "shop/backend-access", 2),
        TRACE,
    )
    assert flow.to_json()["time"] == "2026-11-26T12:00:00.250Z"
    assert flow.to_json()["source"] == FRONTEND_ID and flow.to_json()["dryRun"] is None


def test_a_plaintext_peer_is_named_by_its_direct_address_not_forwarded_ones() -> None:
    flow = http_flow(bytes(http_entry(identity=None, ip="10.0.0.9")), BACKEND)
    assert (flow.identity, flow.source_ip, flow.source) == (None, "10.0.0.9", "10.0.0.9")


def test_an_implicit_deny_is_default_deny_with_the_dry_run_outcome() -> None:
    rbac = {
        **ALLOWED,
        "authz_allow_enforced_engine_result": "denied",
        "authz_allow_enforced_effective_policy_id": "default:deny",
        "dryrun_deny_shadow_engine_result": "denied",
        "dryrun_deny_shadow_effective_policy_id": "shop/try-lockdown#0",
    }
    flow = http_flow(
        bytes(http_entry(method="POST", status=403, metadata={RBAC_NS: rbac})), BACKEND
    )
    assert flow.verdict == Verdict("deny", "default:deny", None, "deny", "shop/try-lockdown")
    assert flow.denied and flow.method == "POST"
    assert flow.to_json()["dryRun"] == {"decision": "deny", "policy": "shop/try-lockdown"}


def test_a_token_refused_before_the_policies_is_jwt_invalid() -> None:
    flow = http_flow(bytes(http_entry(status=401)), BACKEND)
    assert flow.verdict == Verdict("deny", "jwt:invalid")


def test_ext_authz_answers_are_read_by_the_same_mapping() -> None:
    answer = {"decision": "deny", "policy": "shop/no-secrets", "rule": 0.0}
    flow = http_flow(bytes(http_entry(status=403, metadata={EXT_AUTHZ_NS: answer})), BACKEND)
    assert flow.verdict == Verdict("deny", "shop/no-secrets", 0)


def test_a_missing_or_malformed_traceparent_gives_no_trace_id() -> None:
    assert http_flow(bytes(http_entry(traceparent=None)), BACKEND).trace_id is None
    assert http_flow(bytes(http_entry(traceparent="garbage")), BACKEND).trace_id is None


def tcp_entry(**kwargs: Any) -> TcpAccessLogEntry:
    return TcpAccessLogEntry(common_properties=common(**kwargs))


def test_a_refused_tcp_connection_names_the_policy_from_its_termination_details() -> None:
    details = "rbac_access_denied_matched_policy[shop/no-db#1]"
    flow = tcp_flow(bytes(tcp_entry(connection_termination_details=details)), BACKEND)
    assert (flow.protocol, flow.verdict) == ("tcp", Verdict("deny", "shop/no-db", 1))
    details = "rbac_access_denied_matched_policy[default:deny]"
    flow = tcp_flow(bytes(tcp_entry(connection_termination_details=details)), BACKEND)
    assert flow.verdict == Verdict("deny", "default:deny")


def test_an_allowed_tcp_connection_is_attributed_or_reported_unknown() -> None:
    asked = []

    def attribute(workload: str, port: int, identity: str | None, ip: str | None) -> Verdict | None:
        asked.append((workload, port, identity, ip))
        return Verdict("allow", "shop/db-access", 0)

    entry = bytes(tcp_entry())
    assert tcp_flow(entry, BACKEND, attribute).verdict == Verdict("allow", "shop/db-access", 0)
    assert asked == [(BACKEND, 8080, FRONTEND_ID, "10.0.0.7")]
    assert tcp_flow(entry, BACKEND).verdict == Verdict("allow", "unknown")
    assert tcp_flow(entry, BACKEND, lambda *_: None).verdict == Verdict("allow", "unknown")


def test_malformed_bytes_are_refused_as_value_errors() -> None:
    entry = bytes(http_entry())
    with pytest.raises((ValueError, IndexError)):
        http_flow(entry[:-3], BACKEND)
    with pytest.raises(ValueError):
        http_flow(b"\x0f\x00", BACKEND)  # wire type 7 does not exist


def test_the_access_log_config_streams_to_the_given_cluster_and_decodes() -> None:
    assert http_access_logs(TranslationContext(), BACKEND, 8080) == []
    assert tcp_access_logs(TranslationContext(), BACKEND, 9000) == []
    ctx = TranslationContext(flow_log_cluster="meshwarden-xds")
    configs = (http_access_logs(ctx, BACKEND, 8080), tcp_access_logs(ctx, BACKEND, 9000))
    kinds = (HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig)
    for (config,), kind in zip(configs, kinds, strict=True):
        fields = {k: v for k, v in config["typedConfig"].items() if k != "@type"}
        decoded = kind.from_dict(fields)
        assert decoded.common_config.grpc_service.envoy_grpc.cluster_name == "meshwarden-xds"
        assert decoded.common_config.buffer_flush_interval == dt.timedelta(seconds=0.25)
    http_config = HttpGrpcAccessLogConfig.from_dict(
        {
            k: v
            for k, v in http_access_logs(ctx, BACKEND, 8080)[0]["typedConfig"].items()
            if k != "@type"
        }
    )
    assert http_config.additional_request_headers_to_log == ["traceparent"]


# --- the gRPC receiver -------------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.flows: list[Flow] = []

    def add(self, flows: Sequence[Flow]) -> None:
        self.flows.extend(flows)


def message(node_id: str | None, http: int = 0, tcp: int = 0) -> StreamAccessLogsMessage:
    out = StreamAccessLogsMessage()
    if node_id is not None:
        out.identifier = StreamAccessLogsMessageIdentifier(
            node=Node(id=node_id, cluster="shop"), log_name=f"flows:{node_id}:8080"
        )
    if http:
        out.http_logs = StreamAccessLogsMessageHttpAccessLogEntries(
            log_entry=[http_entry(path=f"/n/{i}") for i in range(http)]
        )
    if tcp:
        out.tcp_logs = StreamAccessLogsMessageTcpAccessLogEntries(
            log_entry=[tcp_entry() for _ in range(tcp)]
        )
    return out


async def stream_logs(
    messages: list[StreamAccessLogsMessage], peer: str | None, sink: ListSink
) -> grpc.StatusCode:
    """Send `messages` on one stream to a receiver that sees the client as `peer`."""
    authorize = workload_authorizer(lambda: {BACKEND: BACKEND_ID, "shop/frontend-1": FRONTEND_ID})
    receiver = AccessLogReceiver(sink, authorize, peer_identity=lambda context: peer)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((access_log_handler(receiver),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_unary(
                f"/{SERVICE}/StreamAccessLogs",
                request_serializer=bytes,
                response_deserializer=lambda b: b,
            )

            async def send() -> AsyncIterator[StreamAccessLogsMessage]:
                for m in messages:
                    yield m

            try:
                await call(send())
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK
    finally:
        await server.stop(None)


def test_a_stream_is_bound_to_the_workload_its_mtls_proves() -> None:
    sink = ListSink()
    messages = [message(BACKEND, http=2), message(None, http=1), message(None, tcp=1)]
    assert asyncio.run(stream_logs(messages, BACKEND_ID, sink)) == grpc.StatusCode.OK
    assert [f.path for f in sink.flows] == ["/n/0", "/n/1", "/n/0", None]
    assert {f.workload for f in sink.flows} == {BACKEND}


@pytest.mark.parametrize(
    ("node", "peer"),
    [
        ("shop/frontend-1", BACKEND_ID),  # claims another workload than it proved
        (BACKEND, None),  # no client certificate
        ("shop/unknown", BACKEND_ID),  # not a registered workload
        (None, BACKEND_ID),
    ],  # no identifier on the first message
)
def test_a_stream_claiming_another_workload_is_refused_and_logs_nothing(
    node: str | None, peer: str | None
) -> None:
    sink = ListSink()
    code = asyncio.run(stream_logs([message(node, http=3)], peer, sink))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert sink.flows == []


def test_a_malformed_message_ends_the_stream_as_invalid_argument() -> None:
    sink = ListSink()

    class Garbage:
        def __bytes__(self) -> bytes:
            return b"\x0a\x05\x01"  # a length beyond the end

    code = asyncio.run(stream_logs([Garbage()], BACKEND_ID, sink))  # type: ignore[list-item]
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "fields",
    [
        {"short": "x", "long": "y" * 300, "n": 2.5, "yes": True, "none": None},
        {"nested": {"list": ["a", 1.0, {"deep": "z" * 200}], "empty": {}}, "": ""},
    ],
)
def test_metadata_structs_decode_like_envoy_data_plane_long_values_included(
    fields: dict[str, Any],
) -> None:
    encoded = bytes(Struct.from_dict(fields))
    assert wire.struct_value(encoded) == Struct.parse(encoded).to_dict() == fields


def test_long_header_values_and_paths_decode() -> None:
    path = "/p" + "x" * 500
    traceparent = f"00-{TRACE}-{'b' * 16}-01" + "0" * 200  # a value longer than 127 bytes
    flow = http_flow(bytes(http_entry(path=path, traceparent=traceparent)), BACKEND)
    assert flow.path == path and flow.trace_id == TRACE


def test_a_query_string_never_reaches_the_flow_log() -> None:
    """Clients put tokens and signed-URL signatures in query strings; flow records are kept,
    served by `flows` and the console, and exported, so the path is recorded without them."""
    flow = http_flow(bytes(http_entry(path="/download/report?token=s3cr3t&sig=abc")), BACKEND)
    assert flow.path == "/download/report"
    assert "s3cr3t" not in str(flow.to_json())
