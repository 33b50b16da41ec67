"""Flow log: sidecars stream access logs (gRPC access log service) to the control plane.

Every inbound HTTP port logs through `envoy.access_loggers.http_grpc`, every inbound tcp port
through `envoy.access_loggers.tcp_grpc`, to the control plane over the bootstrap's mTLS cluster.
`AccessLogReceiver` binds each stream to the workload its mTLS proves (a node id claiming another
workload is refused), turns every entry into a `Flow` — who called which port, what was decided
and why — and hands the batch to a `FlowSink`.

Entries are decoded straight from the protobuf wire format, reading only the fields a flow
needs: betterproto2 parses about 1,000 entries/s, too slow for a busy mesh (the unit tests check
this decoder against messages built with envoy-data-plane's classes).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from meshwarden.engine import Cause, Direction, Effect
from meshwarden.xds import _wire as wire
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._decisions import (
    EXT_AUTHZ_NS,
    RBAC_NS,
    Verdict,
    split_action,
    verdict_from_envoy,
)
from meshwarden.xds._egress_log import EgressEnds, egress_ends, egress_verdict, is_egress
from meshwarden.xds._envoy import allowed_sample
from meshwarden.xds._node_auth import NodeAuthorizer, peer_spiffe_id

log = logging.getLogger(__name__)

SERVICE = "envoy.service.accesslog.v3.AccessLogService"
TRACE_HEADER = "traceparent"
TRACE_TAG = "trace_id"
FLUSH_INTERVAL = "0.25s"
UNATTRIBUTED = "unknown"  # an allowed tcp connection whose policy could not be established
_T = "type.googleapis.com/"
_DENIED_DETAILS = "rbac_access_denied_matched_policy["
_DECIDING = frozenset({RBAC_NS, EXT_AUTHZ_NS})  # metadata namespaces `verdict_from_envoy` reads
# envoy.config.core.v3.RequestMethod
_METHODS = ("", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def _common_config(ctx: TranslationContext, workload: str, port: int) -> dict[str, Any]:
    return {
        "logName": f"flows:{workload}:{port}",
        "transportApiVersion": "V3",
        "grpcService": {"envoyGrpc": {"clusterName": ctx.flow_log_cluster}},
        "bufferFlushInterval": FLUSH_INTERVAL,
    }


def http_access_logs(ctx: TranslationContext, workload: str, port: int) -> list[dict[str, Any]]:
    """HCM `access_log` entries for an inbound HTTP port ([] when the flow log is off)."""
    if ctx.flow_log_cluster is None:
        return []
    common = _common_config(ctx, workload, port)
    # the id of the trace Envoy recorded (also when the caller sent no traceparent)
    common["customTags"] = [{"tag": TRACE_TAG, "value": "%TRACE_ID%"}]
    log: dict[str, Any] = {
        "name": "envoy.access_loggers.http_grpc",
        "typedConfig": {
            "@type": _T + "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "commonConfig": common,
            "additionalRequestHeadersToLog": [TRACE_HEADER],
        },
    }
    if ctx.flow_log_allowed_percent < 100:
        log["filter"] = _sampled_unless_refused(ctx.flow_log_allowed_percent)
    return [log]


def _sampled_unless_refused(percent: float) -> dict[str, Any]:
    """Every request answered 4xx/5xx (each denial is 401/403), and `percent` of the others."""
    refused = {
        "statusCodeFilter": {
            "comparison": {
                "op": "GE",
                "value": {"defaultValue": 400, "runtimeKey": "meshwarden.flow_log.min_status"},
            }
        }
    }
    return {"orFilter": {"filters": [refused, allowed_sample(percent)]}}


def tcp_access_logs(ctx: TranslationContext, workload: str, port: int) -> list[dict[str, Any]]:
    """tcp_proxy `access_log` entries for an inbound tcp port ([] when the flow log is off)."""
    if ctx.flow_log_cluster is None:
        return []
    return [
        {
            "name": "envoy.access_loggers.tcp_grpc",
            "typedConfig": {
                "@type": _T + "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
                "commonConfig": _common_config(ctx, workload, port),
            },
        }
    ]


@dataclass(frozen=True, slots=True)
class Flow:
    """One authorization decision of a sidecar: `workload` (`ns/name`) is the destination;
    `identity` the source's SPIFFE ID (None for a plaintext peer). An ingress record is
    reported by the destination's sidecar; an egress record (`egress` set) by the source's,
    and its `workload` is the endpoint reached, or the Service when egress closed it."""

    time: float  # epoch seconds, when the request started
    workload: str
    port: int
    identity: str | None
    source_ip: str | None
    protocol: str  # http | tcp
    method: str | None
    path: str | None
    status: int | None  # the HTTP response code
    verdict: Verdict
    trace_id: str | None
    egress: EgressEnds | None = None

    @property
    def direction(self) -> Direction:
        return Direction.INGRESS if self.egress is None else Direction.EGRESS

    @property
    def reporter(self) -> str:
        """The workload whose sidecar reported the record."""
        return self.workload if self.egress is None else self.egress.source_workload

    @property
    def source(self) -> str:
        return self.identity or self.source_ip or "unknown"

    @property
    def denied(self) -> bool:
        return self.verdict.decision == Effect.DENY

    def to_json(self) -> dict[str, Any]:
        v = self.verdict
        stamp = dt.datetime.fromtimestamp(self.time, dt.UTC).isoformat(timespec="milliseconds")
        out = {
            "time": stamp.replace("+00:00", "Z"),
            "direction": self.direction,
            "source": self.source,
            "sourceIdentity": self.identity,
            "sourceIp": self.source_ip,
            "workload": self.workload,
            "port": self.port,
            "protocol": self.protocol,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "decision": v.decision,
            "policy": v.policy,
            "rule": v.rule,
            "dryRun": None
            if v.dry_run_decision is None
            else {"decision": v.dry_run_decision, "policy": v.dry_run_policy},
            "traceId": self.trace_id,
        }
        if self.egress is not None:
            out.update(self.egress.to_json())
        return out


class FlowSink(Protocol):
    def add(self, flows: Sequence[Flow]) -> None: ...


TcpAttribution = Callable[[str, int, str | None, str | None], Verdict | None]
"""(workload, port, peer SPIFFE ID, peer IP) → the verdict behind an allowed tcp connection, or
None when it cannot be told (network RBAC records nothing about allowed connections)."""


def _metadata(common: wire.Fields) -> dict[str, dict[str, Any]]:
    """The dynamic metadata the verdict is read from (not, e.g., JWT payloads: large and PII)."""
    out = {}
    for entry in wire.submessage(common, 17).get(1, []):
        namespace, fields = wire.pair(entry)
        if namespace.decode() in _DECIDING:
            out[namespace.decode()] = wire.struct_value(fields)
    return out


def _address(common: wire.Fields, number: int) -> tuple[str | None, int | None]:
    socket = wire.submessage(wire.submessage(common, number), 1)
    return wire.text(socket, 2), wire.last(socket, 3)


def _time(common: wire.Fields) -> float:
    stamp = wire.submessage(common, 5)
    return float(wire.last(stamp, 1, 0) + wire.last(stamp, 2, 0) / 1e9)


def _peer_identity(common: wire.Fields) -> str | None:
    peer = wire.submessage(wire.submessage(common, 4), 5)
    for san in peer.get(1, []):
        uri = wire.text(wire.decode(san), 1)
        if uri:
            return uri
    return None


def _trace_id(common: wire.Fields, headers: Mapping[str, str]) -> str | None:
    """The trace Envoy recorded the request in (its `%TRACE_ID%`, when tracing is on), else
    the trace id of the `traceparent` the request came with."""
    recorded = wire.string_map(common, 22).get(TRACE_TAG, "")
    if len(recorded) == 32 and recorded.strip("0"):
        return recorded
    parts = headers.get(TRACE_HEADER, "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


# --- entries → flows --------------------------------------------------------------------------


def _flow(common: wire.Fields, workload: str, protocol: str, verdict: Verdict, **http: Any) -> Flow:
    source_ip, _ = _address(common, 20)
    _, port = _address(common, 3)
    return Flow(
        _time(common),
        workload,
        port or 0,
        _peer_identity(common),
        source_ip,
        protocol,
        verdict=verdict,
        **http,
    )


def http_flow(entry: bytes, workload: str) -> Flow:
    """One `HTTPAccessLogEntry` (wire bytes) reported by the sidecar of `workload`."""
    fields = wire.decode(entry)
    common, request, response = (
        wire.submessage(fields, 1),
        wire.submessage(fields, 3),
        wire.submessage(fields, 4),
    )
    status = wire.last(wire.submessage(response, 1), 1)  # a UInt32Value
    verdict = verdict_from_envoy(_metadata(common), status)
    headers = wire.string_map(request, 13)
    method = wire.last(request, 1, 0)
    return _flow(
        common,
        workload,
        "http",
        verdict,
        status=status,
        path=_without_query(wire.text(request, 5)),
        method=_METHODS[method] if method < len(_METHODS) else str(method),
        trace_id=_trace_id(common, headers),
    )


def _without_query(path: str | None) -> str | None:
    """The path without its query string: a flow record is kept, served (`flows`, the console)
    and exported, and a query string may carry secrets (tokens, signed-URL signatures)."""
    return None if path is None else path.partition("?")[0]


def tcp_flow(entry: bytes, workload: str, attribute: TcpAttribution | None = None) -> Flow:
    """One `TCPAccessLogEntry`: a connection network RBAC refused names its policy in the
    termination details; for an allowed one Envoy records no cause, so `attribute` is asked
    and the policy is `unknown` when it cannot tell."""
    common = wire.submessage(wire.decode(entry), 1)
    details = wire.text(common, 25) or ""
    tags = wire.string_map(common, 22)
    if is_egress(tags):
        return _egress_flow(common, workload, tags, details)
    if details.startswith(_DENIED_DETAILS):
        policy, rule = split_action(details[len(_DENIED_DETAILS) : -1] or Cause.DEFAULT_DENY)
        verdict = Verdict(Effect.DENY, policy, rule)
    else:
        source_ip, _ = _address(common, 20)
        _, port = _address(common, 3)
        found = (
            attribute(workload, port or 0, _peer_identity(common), source_ip)
            if (attribute)
            else None
        )
        verdict = found or Verdict(Effect.ALLOW, UNATTRIBUTED)
    return _flow(
        common, workload, "tcp", verdict, status=None, method=None, path=None, trace_id=None
    )


def _egress_flow(common: wire.Fields, reporter: str, tags: dict[str, str], details: str) -> Flow:
    """A connection through an outbound listener of `reporter` (the source)."""
    refused = details[len(_DENIED_DETAILS) : -1] if details.startswith(_DENIED_DETAILS) else None
    verdict = egress_verdict(tags, refused or (Cause.DEFAULT_DENY if refused == "" else None))
    ends = egress_ends(tags, reporter, _address(common, 13))
    source_ip, _ = _address(common, 20)
    port = tags.get("egress.port", "")
    return Flow(
        _time(common),
        tags.get("egress.workload") or ends.service or "",
        int(port) if port.isdigit() else 0,
        tags.get("egress.source"),
        source_ip,
        "tcp",
        None,
        None,
        None,
        verdict,
        None,
        ends,
    )


def message_flows(
    message: wire.Fields, workload: str, attribute: TcpAttribution | None = None
) -> list[Flow]:
    """The flows of one `StreamAccessLogsMessage` (decoded to its top-level fields)."""
    flows = [http_flow(e, workload) for e in wire.submessage(message, 2).get(1, [])]
    flows += [tcp_flow(e, workload, attribute) for e in wire.submessage(message, 3).get(1, [])]
    return flows


# --- the gRPC service --------------------------------------------------------------------------

PeerIdentity = Callable[[grpc.aio.ServicerContext], str | None]


class AccessLogReceiver:
    """`StreamAccessLogs`: the first message names the node; it must be the workload the mTLS
    peer proves (else PERMISSION_DENIED); every entry becomes a `Flow` of that workload."""

    def __init__(
        self,
        sink: FlowSink,
        authorize: NodeAuthorizer,
        peer_identity: PeerIdentity = peer_spiffe_id,
        attribute_tcp: TcpAttribution | None = None,
    ) -> None:
        self._sink = sink
        self._authorize = authorize
        self._peer_identity = peer_identity
        self._attribute_tcp = attribute_tcp

    async def stream(
        self, messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        workload = None
        async for raw in messages:
            try:
                message = wire.decode(raw)
                if workload is None:
                    workload = self._open(wire.submessage(message, 1), context)
                flows = message_flows(message, workload, self._attribute_tcp)
            except PermissionError as exc:
                log.warning("access log stream refused: %s", exc)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            except (ValueError, IndexError, UnicodeDecodeError) as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad entry: {exc}")
            self._sink.add(flows)
        return b""  # StreamAccessLogsResponse{}

    def _open(self, identifier: wire.Fields, context: grpc.aio.ServicerContext) -> str:
        node = wire.submessage(identifier, 1)
        node_id, cluster = wire.text(node, 1) or "", wire.text(node, 2) or ""
        return self._authorize(self._peer_identity(context), node_id, cluster)


def access_log_handler(receiver: AccessLogReceiver) -> grpc.GenericRpcHandler:
    """The generic handler to add to a `grpc.aio.server` (messages arrive as raw bytes)."""
    return grpc.method_handlers_generic_handler(
        SERVICE, {"StreamAccessLogs": grpc.stream_unary_rpc_method_handler(receiver.stream)}
    )
