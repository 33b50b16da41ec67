"""Incremental (delta) ADS for one stream, as a pure state machine like `SotwStream`.

Differences from SotW (xDS protocol docs, "Incremental xDS"):
- per-resource versions: the client's known versions come from `initial_resource_versions` on
  reconnect and from what was sent; only resources whose version differs are sent;
- deletions and requested-but-absent names go in `removed_resources` (each absence once; the
  name stays subscribed and is sent when it appears);
- a stale nonce never drops a request: subscription changes are always honoured;
- every name in `resource_names_subscribe` is sent again (the client may have forgotten it),
  unless `initial_resource_versions` says the client holds that exact version;
- a NACK marks each resource of the rejected response at its version; those are never resent.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from envoy_data_plane.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
)
from envoy_data_plane.envoy.service.discovery.v3 import Resource as ResourceMessage
from envoy_data_plane.google.protobuf import Any as AnyMessage
from meshwarden.xds._ads_events import Acked, Nacked, Step
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, Resource, Snapshot
from meshwarden.xds._sotw import WILDCARD_TYPES, is_nack, push_order

_INFLIGHT_LIMIT = 32


@dataclass(frozen=True, slots=True)
class _Sent:
    version: str  # the type's snapshot version (system_version_info)
    resources: dict[str, str]  # name → resource version


@dataclass(slots=True)
class _DeltaType:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # what the client holds
    told_absent: set[str] = field(default_factory=set)
    inflight: OrderedDict[str, _Sent] = field(default_factory=OrderedDict)
    started: bool = False
    resumed: bool = False  # reconnected with versions held (initial_resource_versions)
    replied: bool = False  # a response of this type went out on this stream
    confirmed: str | None = None  # last type version ACKed (or found already held)

    def interest(self, available: set[str]) -> set[str]:
        return (available | set(self.known) | self.names) if self.wildcard else set(self.names)

    def subscribe(self, type_url: str, request: DeltaDiscoveryRequest) -> None:
        initial = dict(request.initial_resource_versions)
        subscribe = list(request.resource_names_subscribe)
        if not self.started:
            self.known.update(initial)
            self.resumed = bool(initial)
            if not subscribe and type_url in WILDCARD_TYPES:
                self.wildcard = True  # legacy wildcard: a first request naming nothing
            self.started = True
        for name in subscribe:
            if name == "*":
                self.wildcard = True
                continue
            self.names.add(name)
            self.told_absent.discard(name)
            if initial.get(name) is None or initial[name] != self.known.get(name):
                self.known.pop(name, None)  # resend: the client may have forgotten it
        for name in request.resource_names_unsubscribe:
            if name == "*":
                self.wildcard = False
            else:
                self.names.discard(name)
                self.known.pop(name, None)


class DeltaStream:
    """One delta ADS stream of one node. `rejected` ((type URL, name) → resource version)
    outlives the stream, so a reconnecting Envoy is not sent what it already rejected."""

    def __init__(self, rejected: MutableMapping[tuple[str, str], str] | None = None) -> None:
        self._types: dict[str, _DeltaType] = {}
        self._snapshot: Snapshot | None = None
        self._rejected: MutableMapping[tuple[str, str], str] = {} if rejected is None else rejected
        self._nonces = itertools.count(1)

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def receive(self, request: DeltaDiscoveryRequest) -> Step:
        step = Step()
        type_url = request.type_url
        state = self._types.setdefault(type_url, _DeltaType())
        if request.response_nonce:
            self._acknowledge(request, state, step)
        state.subscribe(type_url, request)
        self._push(type_url, state, step, force=set())
        return step

    def update(self, snapshot: Snapshot) -> Step:
        self._snapshot = snapshot
        step = Step()
        for type_url in push_order(self._types):
            if not (type_url == ENDPOINT and _sent(step, CLUSTER)):
                self._push(type_url, self._types[type_url], step, force=set())
        return step

    def _acknowledge(self, request: DeltaDiscoveryRequest, state: _DeltaType, step: Step) -> None:
        sent = state.inflight.pop(request.response_nonce, None)
        if sent is None:
            return  # stale or unknown nonce: nothing to acknowledge, subscriptions still count
        if not is_nack(request.error_detail):
            state.confirmed = sent.version
            step.events.append(Acked(request.type_url, sent.version))
            return
        for name, version in sent.resources.items():
            self._rejected[(request.type_url, name)] = version
            if state.known.get(name) == version:
                del state.known[name]
        message = request.error_detail.message if request.error_detail else ""
        step.events.append(Nacked(request.type_url, sent.version, message))

    def _push(self, type_url: str, state: _DeltaType, step: Step, force: set[str]) -> None:
        if self._snapshot is None or not state.started:
            return
        available = self._snapshot.of_type(type_url)
        interest = state.interest(set(available))
        changed = [
            available[name]
            for name in sorted(interest & set(available))
            if self._wanted(type_url, state, available[name], forced=name in force)
        ]
        removed = [
            name
            for name in sorted(interest - set(available))
            if name in state.known or (name in state.names and name not in state.told_absent)
        ]
        updated = any(state.known.get(r.name) != r.version for r in changed)
        version = self._snapshot.version(type_url)
        if changed or removed:
            self._respond(type_url, state, step, changed, removed)
        elif not state.replied and not state.resumed:
            self._respond(type_url, state, step, [], [])  # a first answer ends Envoy's init wait
        elif state.confirmed != version and self._holds_all(state, available, interest):
            # nothing to send and nothing in flight: the client holds this version already
            # (after a reconnect, or a change only to names it does not subscribe to)
            state.confirmed = version
            step.events.append(Acked(type_url, version))
        if type_url == CLUSTER and updated and ENDPOINT in self._types:
            endpoints = self._types[ENDPOINT]
            self._push(ENDPOINT, endpoints, step, force=set(endpoints.names))

    @staticmethod
    def _holds_all(
        state: _DeltaType, available: Mapping[str, Resource], interest: set[str]
    ) -> bool:
        return not state.inflight and all(
            state.known.get(name) == available[name].version for name in interest & set(available)
        )

    def _wanted(self, type_url: str, state: _DeltaType, resource: Resource, forced: bool) -> bool:
        if self._rejected.get((type_url, resource.name)) == resource.version:
            return False
        return forced or state.known.get(resource.name) != resource.version

    def _respond(
        self,
        type_url: str,
        state: _DeltaType,
        step: Step,
        changed: list[Resource],
        removed: list[str],
    ) -> None:
        assert self._snapshot is not None
        version = self._snapshot.version(type_url)
        response = DeltaDiscoveryResponse(
            system_version_info=version,
            resources=[_wrap(type_url, resource) for resource in changed],
            type_url=type_url,
            removed_resources=removed,
            nonce=str(next(self._nonces)),
        )
        for resource in changed:
            state.known[resource.name] = resource.version
        for name in removed:
            state.known.pop(name, None)
            if name in state.names:
                state.told_absent.add(name)
        state.replied = True
        state.inflight[response.nonce] = _Sent(version, {r.name: r.version for r in changed})
        while len(state.inflight) > _INFLIGHT_LIMIT:
            state.inflight.popitem(last=False)
        step.send(response, version)


def _wrap(type_url: str, resource: Resource) -> ResourceMessage:
    body = AnyMessage(type_url=type_url, value=resource.body)
    return ResourceMessage(name=resource.name, version=resource.version, resource=body)


def _sent(step: Step, type_url: str) -> bool:
    return any(response.type_url == type_url for response in step.responses)
