"""A small OTLP/gRPC trace collector kept in memory: the real collector service and wire format
(`opentelemetry-proto`'s TraceService). `make demo` shows the spans it receives when no
collector is configured, and the tests use it as their collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    """One received span: its names, ids, attributes and status, as plain values."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    attributes: dict[str, Any]
    status_code: int
    status_message: str


@dataclass
class OtlpReceiver(pb_grpc.TraceServiceServicer):
    """The TraceService, keeping every span it receives (thread-safe) for the demo and tests."""

    endpoint: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(self, request: pb.ExportTraceServiceRequest, context: Any) -> Any:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            service=str(resource.get("service.name", "")),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                            status_message=span.status.message,
                        )
                    )
        with self._lock:
            self.spans.extend(received)
        return pb.ExportTraceServiceResponse()

    def wait_for(
        self,
        found: Callable[[list[ReceivedSpan]], list[ReceivedSpan]],
        count: int = 1,
        timeout: float = 60,
    ) -> list[ReceivedSpan]:
        """Poll until `found(spans)` returns at least `count` spans (up to `timeout` s: exporters
        on a loaded host may take many seconds); returns what it found."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                got = found(list(self.spans))
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OtlpReceiver serving on a free 127.0.0.1 port for the duration of the block."""
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.stop(grace=None)
