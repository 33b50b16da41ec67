"""ext_authz enforcement: the sidecar asks the engine (envoy.service.auth.v3.Authorization).

For a workload with `enforcement: ext-authz` the RBAC filters are replaced by Envoy's ext_authz
filter (HTTP ports: after jwt_authn, before the router; tcp ports: the network filter before
tcp_proxy) calling `Check` on the control plane: over the ADS connection
(`TranslationContext.ext_authz_cluster`), or, for a sidecar bootstrapped with the ext_authz
front's port, on that front's h2 side (`_ext_authz_h2`: the ext_authz workers answer).
The engine decides with the same evaluator as `explain`, answers with the verdict as dynamic
metadata (`Verdict.to_metadata()`, read by the span tags and the flow log) and records a span
`meshwarden.authz.check` that is a child of the request's span.

Which workload is protected: the one whose sidecar called, proved by its mTLS certificate. The
filter names its workload and port in the call's initial metadata; that name is only accepted
when the workload's identity is the caller's (as ADS accepts a node id), since several
workloads may share one identity. An engine that does not answer within `Mesh.spec.extAuthz.
timeout` fails closed (403) unless `failOpen`.

Answers are remembered per workload (`DecisionCache`), keyed on the attributes the workload's
policies can read, so a repeated request skips building the engine's Request and deciding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

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
    Effect,
    SpiffeIdError,
    decide,
)
from meshwarden.xds._check import CheckAttributes, decode_check, request_of
from meshwarden.xds._decision_cache import Decided, DecisionCache
from meshwarden.xds._decisions import Verdict, verdict_of
from meshwarden.xds._ext_authz_filter import PORT_HEADER, WORKLOAD_HEADER
from opentelemetry import metrics, propagate, trace

SERVICE = "envoy.service.auth.v3.Authorization"
SPAN_NAME = "meshwarden.authz.check"
_OK, _PERMISSION_DENIED, _UNAUTHENTICATED = 0, 7, 16


# --------------------------------------------------------------------------- the service

CheckRecorder = Callable[[float, Mapping[str, str]], None]
"""(seconds one check took, its labels: decision, workload) → None."""

PlanResolver = Callable[[Any, Mapping[str, str]], AuthorizationPlan]
"""(the caller — a gRPC call context, or the HTTP front's connection identity —, the call's
metadata) → the plan of the workload whose sidecar is asking; raises PermissionError (refused
caller) or LookupError (nothing to decide with yet)."""


def registered_workload(
    mesh: Callable[[], CompiledMesh | None],
    peer_identity: Callable[[Any], str | None],
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

    def resolve(context: Any, metadata: Mapping[str, str]) -> AuthorizationPlan:
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

    def __init__(
        self,
        resolve: PlanResolver,
        tracer: trace.Tracer | None = None,
        meter_provider: Any = None,
        on_check: CheckRecorder | None = None,
    ) -> None:
        """`on_check`: where each check's duration and labels go instead of this process's
        histogram (an ext_authz worker hands them to the control plane, which `record`s them)."""
        self.resolve = resolve
        self.tracer = tracer or trace.get_tracer("meshwarden.xds.ext_authz")
        self.checks = 0
        self.cache = DecisionCache()
        meter = metrics.get_meter("meshwarden.xds.ext_authz", meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "meshwarden.authz.check.duration",
            unit="s",
            description="time the engine took to answer an ext_authz Check (decode to answer)",
        )
        self._on_check = on_check or self.record

    def record(self, seconds: float, labels: Mapping[str, str]) -> None:
        """One check's duration into `meshwarden.authz.check.duration`."""
        self._duration.record(seconds, labels)

    async def check(self, check: CheckAttributes, context: grpc.aio.ServicerContext) -> bytes:
        """The gRPC `Check` on a grpc.aio server (the caller is the call's context): the
        encoded CheckResponse."""
        return self.respond(check, context, context)

    def respond(self, check: CheckAttributes, context: Any, caller: Any) -> bytes:
        """The encoded CheckResponse to the gRPC call `context` (its metadata names the
        workload and port) from `caller` (what the resolver reads the peer's identity from)."""
        metadata = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)  # `-bin` metadata is bytes; none of it is read
        }
        return _response(*self.answer(check, caller, metadata))

    def answer(
        self, check: CheckAttributes, caller: Any, metadata: Mapping[str, str]
    ) -> tuple[Verdict, str]:
        """The verdict on one check (and the detail of a refusal), traced and timed; the same
        for every transport."""
        started = time.perf_counter()
        verdict, detail, workload = self._check(check, caller, metadata)
        labels = {"decision": str(verdict.decision), "workload": workload or ""}
        self._on_check(time.perf_counter() - started, labels)
        return verdict, detail

    def _check(
        self, check: CheckAttributes, caller: Any, metadata: Mapping[str, str]
    ) -> tuple[Verdict, str, str | None]:
        self.checks += 1
        parent = propagate.extract(_carrier(check, metadata))
        with self.tracer.start_as_current_span(
            SPAN_NAME, context=parent, kind=trace.SpanKind.SERVER
        ) as span:
            try:
                plan = self.resolve(caller, metadata)
                decided = self._decide(plan, int(metadata.get(PORT_HEADER, "0")), check)
            except (PermissionError, LookupError, ValueError, SpiffeIdError) as refused:
                verdict = Verdict(Effect.DENY, Cause.AUTHZ_UNAVAILABLE)
                span.set_attributes(_attributes(verdict, None, None))
                span.set_status(trace.StatusCode.ERROR, str(refused))
                detail = f"the engine cannot decide for this caller: {refused}"
                return verdict, detail, None
            verdict, workload = decided.verdict, plan.workload.ref
            span.set_attributes(_attributes(verdict, decided.identity, workload))
            return verdict, "", workload

    def _decide(self, plan: AuthorizationPlan, port: int, check: CheckAttributes) -> Decided:
        """The engine's answer, remembered for the next Check with the same deciding
        attributes (`DecisionCache`); a request the engine cannot read raises ValueError."""
        key = self.cache.key(plan, port, check)
        decided = self.cache.get(plan, key)
        if decided is None:
            request = request_of(check, plan.workload.ref, port)
            decided = Decided(verdict_of(plan, decide(plan, request)), request.identity)
            self.cache.put(plan, key, decided)
        return decided


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
        status, body = denial(verdict, detail)
        unauthenticated = status == StatusCode.Unauthorized
        denied = DeniedHttpResponse(status=HttpStatus(code=StatusCode(status)), body=body)
        message = CheckResponse(
            status=Status(code=_UNAUTHENTICATED if unauthenticated else _PERMISSION_DENIED),
            denied_response=denied,
            dynamic_metadata=metadata,
        )
    encoded = bytes(message)
    if len(_RESPONSES) >= _RESPONSES_LIMIT:
        _RESPONSES.clear()
    _RESPONSES[key] = encoded
    return encoded


def denial(verdict: Verdict, detail: str) -> tuple[int, str]:
    """A denied request's HTTP status — 401 for a token the engine rejects, else 403 — and the
    body naming the cause, whichever transport carries it."""
    cause = verdict.policy + (f"#{verdict.rule}" if verdict.rule is not None else "")
    unauthenticated = verdict.policy == Cause.JWT_INVALID
    status = StatusCode.Unauthorized if unauthenticated else StatusCode.Forbidden
    return int(status), f"ext_authz: access denied by {cause}{detail}"


def authorization_handler(
    authorization: Authorization, caller: Callable[[Any], Any] | None = None
) -> grpc.GenericRpcHandler:
    """The generic handler to add to a `grpc.aio.server` (responses are already bytes), or to
    another server of gRPC calls, whose caller is `caller(context)` (the ext_authz front's h2
    connections: the connection's verified SPIFFE ID)."""
    if caller is None:
        method: Callable[[CheckAttributes, Any], Any] = authorization.check
    else:

        def method(check: CheckAttributes, context: Any) -> bytes:
            return authorization.respond(check, context, caller(context))

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {"Check": grpc.unary_unary_rpc_method_handler(method, request_deserializer=decode_check)},
    )
