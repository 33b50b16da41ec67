"""`meshwarden explain --trace`: one explanation as an OpenTelemetry span tree — a root span
with the verdict, and one child per policy that selects the destination, saying which rule
matched or why each did not; with a source workload, a child `meshwarden.explain.egress`
with its egress verdict and the egress policies it considered, the same way. Exported
synchronously, so a failure is reported, not lost."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from meshwarden.engine import Decision, Direction, Request


class TraceExportError(RuntimeError):
    pass


def _request_attributes(req: Request) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "meshwarden.destination.workload": req.destination,
        "meshwarden.destination.port": req.port,
    }
    if req.identity:
        attributes["meshwarden.source.spiffe_id"] = req.identity
    if req.source_ip is not None:
        attributes["meshwarden.source.address"] = str(req.source_ip)
    if req.method:
        attributes["http.request.method"] = req.method
        attributes["url.path"] = req.path or "/"
    return attributes


def _verdict(decision: Decision, direction: Direction) -> dict[str, Any]:
    verdict = {
        "meshwarden.authz.decision": str(decision.effect),
        "meshwarden.authz.policy": decision.policy,
        "meshwarden.authz.reason": decision.reason,
        "meshwarden.authz.direction": str(direction),
    }
    if decision.rule is not None:
        verdict["meshwarden.authz.rule"] = str(decision.rule)
    return verdict


def _explained(tracer: Any, span: Any, decision: Decision) -> None:
    """One child of `span` per policy considered, the dry-run outcomes as events, and the
    span's status; ends `span`."""
    from opentelemetry.trace import Status, StatusCode, set_span_in_context

    context = set_span_in_context(span)
    for considered in decision.trace:
        matched = considered.matched_rule is not None
        child = tracer.start_span(
            "meshwarden.explain.policy",
            context=context,
            attributes={
                "meshwarden.authz.policy": considered.policy,
                "meshwarden.policy.action": considered.action,
                "meshwarden.policy.mode": considered.mode,
                "meshwarden.policy.matched": matched,
                "meshwarden.policy.rule_reasons": [r or "MATCHED" for r in considered.rule_reasons],
            },
        )
        if matched:
            child.set_attribute("meshwarden.authz.rule", str(considered.matched_rule))
        if considered.note:
            child.set_attribute("meshwarden.policy.note", considered.note)
        child.end()
    for outcome in decision.dry_run:
        event = {
            "meshwarden.authz.policy": outcome.policy,
            "meshwarden.authz.decision": outcome.decision.lower(),
        }
        span.add_event("dry-run", event)
    if not decision.allowed:
        span.set_status(Status(StatusCode.ERROR, f"denied by {decision.policy}"))
    span.end()


def export_explanation(
    decision: Decision,
    req: Request,
    endpoint: str,
    egress: Decision | None = None,
    source: str | None = None,
) -> str:
    """Export the span tree to the OTLP/gRPC collector at `endpoint`; the trace id (hex). With
    the `egress` decision of the `source` workload, the root also has a child
    `meshwarden.explain.egress` explained the same way."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import set_span_in_context

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "meshwarden-explain"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("meshwarden.explain")
    attributes = _request_attributes(req)
    root = tracer.start_span(
        "meshwarden.explain", attributes=attributes | _verdict(decision, Direction.INGRESS)
    )
    if egress is not None:
        at_source = attributes | _verdict(egress, Direction.EGRESS)
        if source is not None:
            at_source["meshwarden.source.workload"] = source
        span = tracer.start_span(
            "meshwarden.explain.egress", context=set_span_in_context(root), attributes=at_source
        )
        _explained(tracer, span, egress)
    _explained(tracer, root, decision)
    parts = urlsplit(endpoint)
    exporter = OTLPSpanExporter(
        endpoint=f"{parts.hostname}:{parts.port or 4317}",
        insecure=parts.scheme == "http",
        timeout=5,
    )
    result = exporter.export(memory.get_finished_spans())
    exporter.shutdown()
    if result is not SpanExportResult.SUCCESS:
        raise TraceExportError(f"could not export the trace to {endpoint} (is a collector there?)")
    return format(root.get_span_context().trace_id, "032x")
