"""The control plane's own work as OpenTelemetry spans and metrics (API only; the SDK is set up
by meshwarden/): every push (node, type, version, nonce — and for listeners the policy version
they install), every ACK and every NACK (with Envoy's error_detail), the connected sidecars.

Pushes and acknowledgements are children of the span of the policy change that caused them
(`parent()`), so one trace shows a change from load and compile to each sidecar applying it; a
decision span's `meshwarden.policy.version` finds the push that installed its rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshwarden.xds._snapshot import LISTENER
from opentelemetry import metrics, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


class TelemetryObserver:
    """A `StreamObserver` that records spans and metrics; never blocks, never raises into the
    ADS stream."""

    def __init__(
        self,
        *,
        parent: Callable[[], SpanContext | None] = lambda: None,
        policy_version: Callable[[str], str | None] = lambda node: None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self._parent = parent
        self._version = policy_version
        self._tracer = trace.get_tracer("meshwarden.xds", tracer_provider=tracer_provider)
        meter = metrics.get_meter("meshwarden.xds", meter_provider=meter_provider)
        self._pushes = meter.create_counter(
            "meshwarden.xds.pushes", unit="{response}", description="xDS responses sent"
        )
        self._acks = meter.create_counter(
            "meshwarden.xds.acks", unit="{response}", description="xDS responses Envoy applied"
        )
        self._nacks = meter.create_counter(
            "meshwarden.xds.nacks", unit="{response}", description="xDS responses Envoy rejected"
        )
        self._connected = meter.create_up_down_counter(
            "meshwarden.xds.connected_sidecars", unit="{stream}", description="open ADS streams"
        )

    def _span(self, name: str, node: str, type_url: str, version: str, **extra: Any) -> Any:
        parent = self._parent()
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        attributes: dict[str, Any] = {
            "meshwarden.node": node,
            "xds.type_url": type_url,
            "xds.type": _short(type_url),
            "xds.version": version,
        }
        attributes.update({k: v for k, v in extra.items() if v is not None})
        return self._tracer.start_span(name, context=context, attributes=attributes)

    def on_connect(self, node: str) -> None:
        self._connected.add(1)

    def on_disconnect(self, node: str) -> None:
        self._connected.add(-1)

    def on_response(self, node: str, type_url: str, version: str, nonce: str = "") -> None:
        self._pushes.add(1, {"type": _short(type_url)})
        policy = self._version(node) if type_url == LISTENER else None
        extra = {"xds.nonce": nonce, "meshwarden.policy.version": policy}
        self._span("meshwarden.xds.push", node, type_url, version, **extra).end()

    def on_ack(self, node: str, type_url: str, version: str) -> None:
        self._acks.add(1, {"type": _short(type_url)})
        self._span("meshwarden.xds.ack", node, type_url, version).end()

    def on_nack(self, node: str, type_url: str, version: str, error_message: str) -> None:
        self._nacks.add(1, {"type": _short(type_url)})
        span = self._span(
            "meshwarden.xds.nack", node, type_url, version, **{"xds.error_detail": error_message}
        )
        span.set_status(Status(StatusCode.ERROR, error_message[:512]))
        span.end()
