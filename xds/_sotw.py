"""State-of-the-world ADS for one stream, as a pure state machine: feed it Envoy's requests and
new snapshots, it returns the responses to send and what happened (ACK, NACK, sent).

Rules (xDS protocol docs; go-control-plane's known bugs avoided):
- a request whose nonce is not the last one sent for its type is stale and ignored;
- a NACK is `error_detail` being set; the rejected version is recorded and never resent, the
  stream waits for a snapshot with a different version of that type;
- pushes go out in `PUSH_ORDER` (CDS → EDS → LDS → RDS) and every CDS response is followed by
  an EDS response (even an unchanged one), or updated clusters stay warming;
- CDS/LDS are wildcard (full state); EDS/RDS send only the requested names and answer as soon
  as a name is newly requested.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.protobuf import Any as AnyMessage
from meshwarden.xds._ads_events import Acked, Nacked, Step
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, Snapshot

WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


def is_nack(error_detail: object) -> bool:
    return error_detail is not None and bool(
        getattr(error_detail, "code", 0) or getattr(error_detail, "message", "")
    )


@dataclass(slots=True)
class _TypeState:
    """Per type URL on one stream."""

    wildcard: bool = False
    names: frozenset[str] = frozenset()
    nonce: str = ""
    sent_version: str | None = None  # None: nothing sent on this stream yet
    answered: frozenset[str] = frozenset()  # names covered by the last response

    def subscribe(self, type_url: str, requested: list[str]) -> bool:
        """Take the request's names; True when something is newly asked for."""
        names = frozenset(requested) - {"*"}
        wildcard = "*" in requested or (not requested and type_url in WILDCARD_TYPES)
        new = (wildcard and not self.wildcard) or bool(names - self.answered)
        self.wildcard, self.names = wildcard, names
        return new or self.sent_version is None


class SotwStream:
    """One SotW ADS stream of one node. `rejected` (type URL → version) outlives the stream,
    so a reconnecting Envoy is not sent a version it already rejected."""

    def __init__(self, rejected: MutableMapping[str, str] | None = None) -> None:
        self._types: dict[str, _TypeState] = {}
        self._snapshot: Snapshot | None = None
        self._rejected: MutableMapping[str, str] = {} if rejected is None else rejected
        self._nonces = itertools.count(1)

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def receive(self, request: DiscoveryRequest) -> Step:
        step = Step()
        type_url = request.type_url
        state = self._types.get(type_url)
        if state is None:
            state = self._types[type_url] = _TypeState()
        elif request.response_nonce != state.nonce:
            return step  # stale: it answers a response that has since been replaced
        if request.response_nonce and state.sent_version is not None:
            self._acknowledge(request, state, step)
        first = state.sent_version is None
        if state.subscribe(type_url, list(request.resource_names)):
            self._answer(type_url, state, step, skip_rejected=first and bool(request.version_info))
        return step

    def update(self, snapshot: Snapshot) -> Step:
        """A new snapshot for this node: push every requested type whose version changed."""
        self._snapshot = snapshot
        step = Step()
        for type_url in push_order(self._types):
            state = self._types[type_url]
            if type_url == ENDPOINT and _sent(step, CLUSTER):
                continue
            version = snapshot.version(type_url)
            if version != state.sent_version and version != self._rejected.get(type_url):
                self._answer(type_url, state, step, skip_rejected=True)
        return step

    def _acknowledge(self, request: DiscoveryRequest, state: _TypeState, step: Step) -> None:
        version = state.sent_version or ""
        if is_nack(request.error_detail):
            self._rejected[request.type_url] = version
            message = request.error_detail.message if request.error_detail else ""
            step.events.append(Nacked(request.type_url, version, message))
        else:
            step.events.append(Acked(request.type_url, version))

    def _answer(self, type_url: str, state: _TypeState, step: Step, skip_rejected: bool) -> None:
        if self._snapshot is None:
            return
        version = self._snapshot.version(type_url)
        if skip_rejected and version == self._rejected.get(type_url):
            return
        self._respond(type_url, state, step)
        if type_url == CLUSTER and ENDPOINT in self._types:
            self._respond(ENDPOINT, self._types[ENDPOINT], step)

    def _respond(self, type_url: str, state: _TypeState, step: Step) -> None:
        assert self._snapshot is not None
        resources = self._snapshot.of_type(type_url)
        if state.wildcard:
            chosen = [resources[name] for name in sorted(resources)]
        else:
            chosen = [resources[name] for name in sorted(state.names) if name in resources]
        version = self._snapshot.version(type_url)
        response = DiscoveryResponse(
            version_info=version,
            resources=[AnyMessage(type_url=type_url, value=r.body) for r in chosen],
            type_url=type_url,
            nonce=str(next(self._nonces)),
        )
        state.nonce, state.sent_version, state.answered = response.nonce, version, state.names
        step.send(response, version)


def push_order(requested: Iterable[str]) -> list[str]:
    """The requested types, `PUSH_ORDER` first, any others (e.g. secrets) after them."""
    rank = {type_url: n for n, type_url in enumerate(PUSH_ORDER)}
    return sorted(requested, key=lambda type_url: (rank.get(type_url, len(rank)), type_url))


def _sent(step: Step, type_url: str) -> bool:
    return any(response.type_url == type_url for response in step.responses)
