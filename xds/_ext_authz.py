"""ext_authz enforcement: the sidecar asks the engine (envoy.service.auth.v3.Authorization).

For a workload with `enforcement: ext-authz` the RBAC filters are replaced by Envoy's ext_authz
filter (HTTP ports: after jwt_authn, before the router; tcp ports: the network filter before
tcp_proxy) calling `Check` on the control plane through `TranslationContext.ext_authz_cluster`.
The engine decides with the same evaluator as `explain`, answers with the verdict as dynamic
metadata (`Verdict.to_metadata()`, read by the span tags and the flow log) and records a span
`meshwarden.authz.check` that is a child of the request's span.

Which workload is protected: the one whose sidecar called, proved by its mTLS certificate. The
filter names its workload and port in the call's initial metadata; that name is only accepted
when the workload's identity is the caller's (as ADS accepts a node id), since several
workloads may share one identity. An engine that does not answer within `Mesh.spec.extAuthz.
timeout` fails closed (403) unless `failOpen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from envoy_data_plane.envoy.service.auth.v3 import (
    CheckResponse,
    DeniedHttpResponse,
    OkHttpResponse,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Struct
from envoy_data_plane.google.rpc import Status
from meshwarden.engine import (
    AuthorizationPlan,
    Cause,
    CompiledMesh,
    Decision,
    Effect,
    Request,
    SpiffeId,
    SpiffeIdError,
    decide,
    dry_run_verdict,
)
from meshwarden.xds import _wire as wire
from meshwarden.xds._decisions import Verdict
from meshwarden.xds._predicates import JWT_PAYLOAD_KEY
from opentelemetry import metrics, propagate, trace

if TYPE_CHECKING:
    from meshwarden.xds._translate import TranslationContext

SERVICE = "envoy.service.auth.v3.Authorization"
WORKLOAD_HEADER = "x-meshwarden-workload"  # gRPC initial metadata set by the filter config
PORT_HEADER = "x-meshwarden-port"
JWT_AUTHN_NS = "envoy.filters.http.jwt_authn"
SPAN_NAME = "meshwarden.authz.check"
_T = "type.googleapis.com/"
_OK, _PERMISSION_DENIED, _UNAUTHENTICATED = 0, 7, 16

# --------------------------------------------------------------------------- Envoy filters


def _duration(value: str) -> str:
    """`250ms` / `2s` (the model's spelling) → protobuf JSON duration."""
    if value.endswith("ms"):
        return f"{int(value[:-2]) / 1000:g}s"
    return f"{int(value[:-1])}s"


def _grpc_service(plan: AuthorizationPlan, port: int, ctx: TranslationContext) -> dict[str, Any]:
    if ctx.ext_authz_cluster is None:
        raise ValueError(f"{plan.workload.ref}: ext-authz enforcement needs ext_authz_cluster")
    return {
        "envoyGrpc": {"clusterName": ctx.ext_authz_cluster},
        "timeout": _duration(plan.mesh.ext_authz.timeout),
        "initialMetadata": [{"key": WORKLOAD_HEADER, "value": plan.workload.ref},
                            {"key": PORT_HEADER, "value": str(port)}],
    }  # fmt: skip


def ext_authz_http_filter(
    plan: AuthorizationPlan, port: int, identified: bool, ctx: TranslationContext
) -> dict[str, Any]:
    """The HTTP filter that replaces the RBAC filters for an ext-authz workload. The peer's
    identity reaches the engine as `source.principal` (empty on a plaintext chain)."""
    del identified  # the engine reads the peer from the request itself
    typed = {
        "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpcService": _grpc_service(plan, port, ctx),
        "transportApiVersion": "V3",
        "failureModeAllow": plan.mesh.ext_authz.fail_open,
        "statusOnError": {"code": "Forbidden"},
        "metadataContextNamespaces": [JWT_AUTHN_NS],
        "statPrefix": "authz_",
    }
    return {"name": "envoy.filters.http.ext_authz", "typedConfig": typed}


def ext_authz_network_filter(
    plan: AuthorizationPlan, port: int, identified: bool, ctx: TranslationContext
) -> dict[str, Any]:
    """The network filter that replaces network RBAC on a tcp port of an ext-authz workload."""
    del identified
    typed = {
        "@type": _T + "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
        "grpcService": _grpc_service(plan, port, ctx),
        "transportApiVersion": "V3",
        "failureModeAllow": plan.mesh.ext_authz.fail_open,
        "statPrefix": "authz_",
    }
    return {"name": "envoy.filters.network.ext_authz", "typedConfig": typed}


# --------------------------------------------------------------------------- CheckRequest → verdict


@dataclass(frozen=True, slots=True)
class CheckAttributes:
    """What the engine reads of a CheckRequest: the peer's verified identity (`source.principal`,
    empty for a plaintext peer) and address, the HTTP request (none on a tcp port) and the
    payload jwt_authn verified, when a token came."""

    principal: str = ""
    source_ip: str = ""
    http: bool = False
    method: str = ""
    path: str = ""
    host: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    jwt_payload: Any = None  # the verified token's claims (JSON-shaped), None without a token


def decode_check(buf: bytes) -> CheckAttributes:
    """A CheckRequest's attributes read straight off the wire (with the flow log's protobuf
    reader). betterproto2's pure-Python `CheckRequest.parse` takes ≈0.7 ms for a small request,
    more than the decision itself; this reads only the fields the engine needs
    (envoy/service/auth/v3/attribute_context.proto: CheckRequest.attributes=1; AttributeContext
    source=1, request=4, metadata_context=11; Peer address=1 → SocketAddress(1).address=2,
    principal=4; Request.http=2; HttpRequest method=2, headers=3, path=4, host=5;
    Metadata.filter_metadata=1)."""
    attributes = wire.submessage(wire.decode(buf), 1)
    source = wire.submessage(attributes, 1)
    request = wire.submessage(attributes, 4)
    out: dict[str, Any] = {
        "principal": _string(source, 4),
        "source_ip": _string(wire.submessage(wire.submessage(source, 1), 1), 2),
    }
    if 2 in request:
        http = wire.submessage(request, 2)
        pairs = (wire.pair(entry) for entry in http.get(3, ()))
        headers = {key.decode(): value.decode() for key, value in pairs}
        out.update(http=True, method=_string(http, 2), path=_string(http, 4),
                   host=_string(http, 5), headers=headers)  # fmt: skip
    for entry in wire.submessage(attributes, 11).get(1, ()):
        key, value = wire.pair(entry)
        if key == _JWT_AUTHN_KEY:
            out["jwt_payload"] = wire.struct_value(value).get(JWT_PAYLOAD_KEY)
    return CheckAttributes(**out)


_JWT_AUTHN_KEY = JWT_AUTHN_NS.encode()


def _string(fields: dict[int, list[Any]], number: int) -> str:
    value: bytes = wire.last(fields, number, b"")
    return value.decode()


def _whole(value: Any) -> Any:
    """JSON-shaped Python from a Struct; whole numbers become ints (claims like `exp`)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


def jwt_claims(attributes: CheckAttributes) -> dict[str, Any] | None:
    """The payload jwt_authn verified (forwarded as metadata context), None without one."""
    claims = _whole(attributes.jwt_payload)
    return claims if isinstance(claims, dict) else None


@functools.lru_cache(maxsize=4096)
def _spiffe_id(principal: str) -> SpiffeId:
    return SpiffeId.parse(principal)


def request_of(attributes: CheckAttributes, workload: str, port: int) -> Request:
    """The engine's view of one Check. The path goes through the engine's normalisation, which
    agrees with the HCM's (already applied) and drops the query."""
    http = attributes.http
    return Request.build(
        workload,
        port,
        identity=_spiffe_id(attributes.principal) if attributes.principal else None,
        source_ip=attributes.source_ip or None,
        method=(attributes.method or None) if http else None,
        path=(attributes.path or None) if http else None,
        host=(attributes.host or None) if http else None,
        headers=attributes.headers if http else None,
        jwt_claims=jwt_claims(attributes) if http else None,
    )


def verdict_of(plan: AuthorizationPlan, decision: Decision) -> Verdict:
    """The decision as a Verdict, with the dry-run verdict when the plan has dry-run policies."""
    matched = [o for o in decision.dry_run if o.rule is not None]
    dry = dry_run_verdict(matched, {p.action for p in plan.dry_run}) if plan.dry_run else None
    dry_decision, dry_policy = dry if dry is not None else (None, None)
    return Verdict(decision.effect, decision.policy, decision.rule, dry_decision, dry_policy)


# --------------------------------------------------------------------------- the service

PlanResolver = Callable[[grpc.aio.ServicerContext, Mapping[str, str]], AuthorizationPlan]
"""(call context, its metadata) → the plan of the workload whose sidecar is asking; raises
PermissionError (refused caller) or LookupError (nothing to decide with yet)."""


def registered_workload(
    mesh: Callable[[], CompiledMesh | None],
    peer_identity: Callable[[grpc.aio.ServicerContext], str | None],
) -> PlanResolver:
    """The production resolver: the caller's mTLS SPIFFE ID must be a registered workload's;
    the workload the filter names is used only if it has that identity (several workloads may
    share one); without a name, the identity's only workload."""
    last: list[tuple[CompiledMesh, dict[str, list[str]]]] = []  # the index of the last mesh

    def by_identity(compiled: CompiledMesh) -> dict[str, list[str]]:
        if not last or last[0][0] is not compiled:
            refs: dict[str, list[str]] = {}
            for ref, workload in sorted(compiled.registry.workloads.items()):
                refs.setdefault(workload.identity, []).append(ref)
            last[:] = [(compiled, refs)]
        return last[0][1]

    def resolve(
        context: grpc.aio.ServicerContext, metadata: Mapping[str, str]
    ) -> AuthorizationPlan:
        compiled = mesh()
        if compiled is None:
            raise LookupError("no policies are loaded yet")
        peer = peer_identity(context)
        if peer is None:
            raise PermissionError("no client certificate with a SPIFFE ID")
        refs = by_identity(compiled).get(peer, [])
        claimed = metadata.get(WORKLOAD_HEADER)
        if claimed is not None and claimed not in refs:
            raise PermissionError(f"{peer} is not the identity of workload {claimed!r}")
        if claimed is None and len(refs) != 1:
            raise PermissionError(f"{peer} is not the identity of exactly one workload")
        return compiled.plan(claimed or refs[0])

    return resolve


class Authorization:
    """`Check`: decide with the engine, trace the decision, answer with the verdict."""

    def __init__(self, resolve: PlanResolver, tracer: trace.Tracer | None = None,
                 meter_provider: Any = None) -> None:  # fmt: skip
        self.resolve = resolve
        self.tracer = tracer or trace.get_tracer("meshwarden.xds.ext_authz")
        self.checks = 0
        meter = metrics.get_meter("meshwarden.xds.ext_authz", meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "meshwarden.authz.check.duration", unit="s",
            description="time the engine took to answer an ext_authz Check (decode to answer)",
        )  # fmt: skip

    async def check(self, check: CheckAttributes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        answer, verdict, workload = self._check(check, context)
        labels = {"decision": verdict.decision, "workload": workload or ""}
        self._duration.record(time.perf_counter() - started, labels)
        return answer

    def _check(self, check: CheckAttributes, context: grpc.aio.ServicerContext
               ) -> tuple[bytes, Verdict, str | None]:  # fmt: skip
        self.checks += 1
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        parent = propagate.extract(_carrier(check, metadata))
        with self.tracer.start_as_current_span(
            SPAN_NAME, context=parent, kind=trace.SpanKind.SERVER
        ) as span:
            try:
                plan = self.resolve(context, metadata)
                port = int(metadata.get(PORT_HEADER, "0"))
                request = request_of(check, plan.workload.ref, port)
            except (PermissionError, LookupError, ValueError, SpiffeIdError) as refused:
                verdict = Verdict(Effect.DENY, Cause.AUTHZ_UNAVAILABLE)
                span.set_attributes(_attributes(verdict, None, None))
                span.set_status(trace.StatusCode.ERROR, str(refused))
                detail = f"the engine cannot decide for this caller: {refused}"
                return _response(verdict, detail), verdict, None
            decision = decide(plan, request)
            verdict = verdict_of(plan, decision)
            span.set_attributes(_attributes(verdict, request.identity, plan.workload.ref))
            return _response(verdict, ""), verdict, plan.workload.ref


def _carrier(check: CheckAttributes, metadata: Mapping[str, str]) -> Mapping[str, str]:
    """Where the parent span is: Envoy's ext_authz client span in the call's metadata when
    Envoy traces, else the `traceparent` the request arrived with."""
    return metadata if "traceparent" in metadata else check.headers


def _attributes(verdict: Verdict, source: str | None, workload: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "meshwarden.authz.decision": verdict.decision,
        "meshwarden.authz.policy": verdict.policy,
    }
    if verdict.rule is not None:  # a string, as on the sidecars' spans (Envoy tags are strings)
        out["meshwarden.authz.rule"] = str(verdict.rule)
    if verdict.dry_run_decision is not None:
        out["meshwarden.authz.dry_run.decision"] = verdict.dry_run_decision
        out["meshwarden.authz.dry_run.policy"] = verdict.dry_run_policy or ""
    if source is not None:
        out["meshwarden.source.spiffe_id"] = source
    if workload is not None:
        out["meshwarden.destination.workload"] = workload
    return out


_RESPONSES: dict[tuple[Verdict, str], bytes] = {}
_RESPONSES_LIMIT = 4096


def _response(verdict: Verdict, detail: str) -> bytes:
    """The encoded CheckResponse (encoding is pure Python: each distinct answer is encoded once).
    A denial answers 403 (401 for a token the engine rejects) with a body naming the cause."""
    key = (verdict, detail)
    cached = _RESPONSES.get(key)
    if cached is not None:
        return cached
    metadata = Struct.from_dict(verdict.to_metadata())
    if verdict.decision == Effect.ALLOW:
        message = CheckResponse(
            status=Status(code=_OK), ok_response=OkHttpResponse(), dynamic_metadata=metadata
        )
    else:
        unauthenticated = verdict.policy == Cause.JWT_INVALID
        cause = verdict.policy + (f"#{verdict.rule}" if verdict.rule is not None else "")
        code = StatusCode.Unauthorized if unauthenticated else StatusCode.Forbidden
        message = CheckResponse(
            status=Status(code=_UNAUTHENTICATED if unauthenticated else _PERMISSION_DENIED),
            denied_response=DeniedHttpResponse(
                status=HttpStatus(code=code), body=f"ext_authz: access denied by {cause}{detail}"
            ),
            dynamic_metadata=metadata,
        )
    encoded = bytes(message)
    if len(_RESPONSES) >= _RESPONSES_LIMIT:
        _RESPONSES.clear()
    _RESPONSES[key] = encoded
    return encoded


def authorization_handler(authorization: Authorization) -> grpc.GenericRpcHandler:
    """The generic handler to add to a `grpc.aio.server` (responses are already bytes)."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                authorization.check, request_deserializer=decode_check
            )
        },
    )


# --------------------------------------------------------------------------- loopback serving


def loopback_cluster(name: str, port: int) -> dict[str, Any]:
    """A plaintext HTTP/2 cluster to 127.0.0.1:port, for tests and benchmarks that run the
    service without the control plane's mTLS endpoint."""
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicitHttpConfig": {"http2ProtocolOptions": {}}}}  # fmt: skip
    return {"name": name, "type": "STATIC", "connectTimeout": "1s",
            "typedExtensionProtocolOptions": h2,
            "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": {"socketAddress": {
                    "address": "127.0.0.1", "portValue": port}}}}]}]}}  # fmt: skip


@contextlib.contextmanager
def serve_on_loopback(authorization: Authorization) -> Iterator[int]:
    """The service on a plaintext 127.0.0.1 port in a thread of its own (tests, benchmarks);
    yields the port. Production registers `authorization_handler` on the mTLS endpoint."""
    loop = asyncio.new_event_loop()
    ready: list[Any] = []
    started = threading.Event()

    async def start() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((authorization_handler(authorization),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.extend((server, port))

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="ext-authz-loopback", daemon=True)
    thread.start()
    started.wait(10)
    if not ready:
        raise RuntimeError("the ext_authz loopback server did not start")
    try:
        yield ready[1]
    finally:
        asyncio.run_coroutine_threadsafe(ready[0].stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
