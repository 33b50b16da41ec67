"""What happens on an ADS stream, as values the stream state machines return and as the
observer protocol the gRPC adapter reports them to (readiness, status, tracing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from envoy_data_plane.envoy.service.discovery.v3 import DeltaDiscoveryResponse, DiscoveryResponse


@dataclass(frozen=True, slots=True)
class Acked:
    """Envoy applied `version` of `type_url`."""

    type_url: str
    version: str


@dataclass(frozen=True, slots=True)
class Nacked:
    """Envoy rejected `version` of `type_url`; it keeps serving what it had before."""

    type_url: str
    version: str
    message: str


@dataclass(frozen=True, slots=True)
class Sent:
    """A response went out (for counting and tracing; not an acknowledgement)."""

    type_url: str
    version: str
    nonce: str


StreamEvent = Acked | Nacked | Sent


@dataclass(slots=True)
class Step:
    """What one input (a request or a new snapshot) made a stream do."""

    responses: list[DiscoveryResponse | DeltaDiscoveryResponse] = field(default_factory=list)
    events: list[StreamEvent] = field(default_factory=list)

    def send(self, response: DiscoveryResponse | DeltaDiscoveryResponse, version: str) -> None:
        self.responses.append(response)
        self.events.append(Sent(response.type_url, version, response.nonce))


class StreamObserver(Protocol):
    """Stream lifecycle hooks, called on the server's event loop; must not block."""

    def on_connect(self, node: str) -> None: ...

    def on_ack(self, node: str, type_url: str, version: str) -> None: ...

    def on_nack(self, node: str, type_url: str, version: str, error_message: str) -> None: ...

    def on_response(self, node: str, type_url: str, version: str, nonce: str = "") -> None: ...

    def on_disconnect(self, node: str) -> None: ...


class SilentObserver:
    """An observer that ignores everything (the default)."""

    def on_connect(self, node: str) -> None:
        pass

    def on_ack(self, node: str, type_url: str, version: str) -> None:
        pass

    def on_nack(self, node: str, type_url: str, version: str, error_message: str) -> None:
        pass

    def on_response(self, node: str, type_url: str, version: str, nonce: str = "") -> None:
        pass

    def on_disconnect(self, node: str) -> None:
        pass


def report(observer: StreamObserver, node: str, events: list[StreamEvent]) -> None:
    for event in events:
        if isinstance(event, Acked):
            observer.on_ack(node, event.type_url, event.version)
        elif isinstance(event, Nacked):
            observer.on_nack(node, event.type_url, event.version, event.message)
        else:
            observer.on_response(node, event.type_url, event.version, event.nonce)
