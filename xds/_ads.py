"""The gRPC side of ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService`): state of the
world and delta. A thin adapter: it authorizes the stream's node against the mTLS peer, then
feeds Envoy's requests and the node's snapshot changes to a `SotwStream` / `DeltaStream` and
writes what they return. The configuration comes from a `ConfigWatcher`, nothing else.

A stream costs one task, the one grpc.aio runs the handler in: it reads requests with
`context.read()`; a snapshot change is a callback from the watcher that feeds the machine on the
event loop, so requests and changes reach the machine in arrival order. Responses go out in
order through one outbox, written by the handler after a request, or by a short-lived task
after a change (only while there is something to write)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc
from envoy_data_plane.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from meshwarden.xds._ads_events import SilentObserver, Step, StreamObserver, report
from meshwarden.xds._delta import DeltaStream
from meshwarden.xds._discovery_wire import parse_discovery_request, serialize_discovery_response
from meshwarden.xds._node_auth import NodeAuthorizer, peer_spiffe_id
from meshwarden.xds._snapshot import ConfigWatcher, Snapshot
from meshwarden.xds._sotw import SotwStream

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
Request = TypeVar("Request", DiscoveryRequest, DeltaDiscoveryRequest)
_Received = TypeVar("_Received", DiscoveryRequest, DeltaDiscoveryRequest, contravariant=True)
Response = DiscoveryResponse | DeltaDiscoveryResponse
PeerIdentity = Callable[[grpc.aio.ServicerContext], str | None]
Admitted = Callable[[str, grpc.aio.ServicerContext, Any], Awaitable[None] | None]
"""Told the node key of each admitted stream, its call (e.g. to note the certificate) and the
Envoy node its first request carried (e.g. to read the node's metadata); what it returns, if
anything, is awaited before the stream's first response (e.g. the node's snapshot being
rebuilt for what its metadata says)."""


class _Machine(Protocol[_Received]):
    @property
    def snapshot(self) -> Snapshot | None: ...

    def receive(self, request: _Received) -> Step: ...

    def update(self, snapshot: Snapshot) -> Step: ...


class AggregatedDiscovery:
    """ADS for every node the `authorize` callable admits. NACKed versions are remembered per
    node for the life of this server, so reconnecting Envoys are not sent them again."""

    def __init__(
        self,
        watcher: ConfigWatcher,
        authorize: NodeAuthorizer,
        observer: StreamObserver | None = None,
        peer_identity: PeerIdentity = peer_spiffe_id,
        admitted: Admitted | None = None,
    ) -> None:
        self._watcher = watcher
        self._admitted = admitted
        self._authorize = authorize
        self._observer: StreamObserver = observer or SilentObserver()
        self._peer_identity = peer_identity
        self._sotw_rejected: dict[str, dict[str, str]] = {}
        self._delta_rejected: dict[str, dict[tuple[str, str], str]] = {}

    async def stream(self, requests: object, context: grpc.aio.ServicerContext) -> None:
        """The SotW handler (reader/writer API: `requests` is grpc's iterator, left unused)."""
        first, node = await self._open(context)
        machine = SotwStream(self._sotw_rejected.setdefault(node, {}))
        await _Stream(node, machine, context, self._watcher, self._observer).run(first)

    async def delta(self, requests: object, context: grpc.aio.ServicerContext) -> None:
        """The delta handler (reader/writer API, as `stream`)."""
        first, node = await self._open(context)
        machine = DeltaStream(self._delta_rejected.setdefault(node, {}))
        await _Stream(node, machine, context, self._watcher, self._observer).run(first)

    async def _open(self, context: grpc.aio.ServicerContext) -> tuple[Any, str]:
        """The first request (it carries the node) and the node key it is authorized as."""
        first = await context.read()
        if first is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.CANCELLED, "stream closed before any request")
        peer = self._peer_identity(context)
        node_id = first.node.id if first.node else ""
        cluster = first.node.cluster if first.node else ""
        try:
            node = self._authorize(peer, node_id, cluster)
        except PermissionError as exc:
            log.warning("ADS stream refused: %s", exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if self._admitted is not None:
            waiting = self._admitted(node, context, first.node)
            if waiting is not None:
                await waiting
        return first, node


class _Stream(Generic[Request]):
    """The I/O of one admitted stream, run in the handler's task until Envoy half-closes it
    or the call ends; on the way out it leaves no watch, scheduled callback or task behind."""

    __slots__ = (
        "_context",
        "_machine",
        "_node",
        "_observer",
        "_outbox",
        "_wake",
        "_watcher",
        "_writer",
        "_writing",
    )

    def __init__(
        self,
        node: str,
        machine: _Machine[Request],
        context: grpc.aio.ServicerContext,
        watcher: ConfigWatcher,
        observer: StreamObserver,
    ) -> None:
        self._node, self._context = node, context
        self._machine: _Machine[Request] = machine
        self._watcher, self._observer = watcher, observer
        self._outbox: list[Response] = []
        self._writing = False  # a write of the outbox is under way (handler or `_writer`)
        self._writer: asyncio.Task[None] | None = None
        self._wake: asyncio.Handle | None = None

    async def run(self, first: Request) -> None:
        self._observer.on_connect(self._node)
        unwatch = self._watcher.watch(self._node, self._changed)
        try:
            current = self._watcher.snapshot(self._node)
            if current is not None:
                self._machine.update(current)
            await self._handle(self._machine.receive(first))
            while await self._next():
                pass
            if self._writer is not None:  # half-closed: what was decided before still goes out
                await self._writer
        finally:
            unwatch()
            if self._wake is not None:
                self._wake.cancel()
            await self._stop_writer()
            self._observer.on_disconnect(self._node)

    async def _next(self) -> bool:
        """Read and answer one request; False once Envoy half-closed. (The request lives only
        in this frame, not in the idle stream's.)"""
        request = await self._context.read()
        if request is grpc.aio.EOF:
            return False
        log.debug("ADS %s <- %s", self._node, _describe(request))
        await self._handle(self._machine.receive(request))
        return True

    def _changed(self, snapshot: Snapshot) -> None:
        """The watcher's callback (inside its writer's call): apply it on the next loop turn,
        once however many changes come before then."""
        if self._wake is None:
            self._wake = asyncio.get_running_loop().call_soon(self._apply)

    def _apply(self) -> None:
        self._wake = None
        snapshot = self._watcher.snapshot(self._node)
        if snapshot is None or snapshot is self._machine.snapshot:
            return
        self._queue(self._machine.update(snapshot))
        if self._outbox and not self._writing:
            self._writing = True
            self._writer = asyncio.get_running_loop().create_task(self._write_behind())

    async def _handle(self, step: Step) -> None:
        self._queue(step)
        if self._outbox and not self._writing:
            self._writing = True
            await self._flush()

    def _queue(self, step: Step) -> None:
        report(self._observer, self._node, step.events)
        for event in step.events:
            log.debug("ADS %s -> %s", self._node, event)
        self._outbox.extend(step.responses)

    async def _flush(self) -> None:
        """Write the outbox in order; the caller set `_writing`."""
        try:
            while self._outbox:
                await self._context.write(self._outbox.pop(0))
        finally:
            self._writing = False

    async def _write_behind(self) -> None:
        try:
            await self._flush()
        except Exception as exc:  # the call ended under it: the handler's read ends it too
            log.debug("ADS %s: write failed: %s", self._node, exc)
        finally:
            self._writer = None

    async def _stop_writer(self) -> None:
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer


def _describe(request: DiscoveryRequest | DeltaDiscoveryRequest) -> str:
    kind = request.type_url.rsplit(".", 1)[-1]
    error = request.error_detail.message if request.error_detail else ""
    if isinstance(request, DiscoveryRequest):
        names = list(request.resource_names)
        return (
            f"{kind} nonce={request.response_nonce!r} version={request.version_info!r} "
            f"names={names} error={error!r}"
        )
    return (
        f"{kind} nonce={request.response_nonce!r} +{list(request.resource_names_subscribe)} "
        f"-{list(request.resource_names_unsubscribe)} error={error!r}"
    )


def ads_handler(ads: AggregatedDiscovery) -> grpc.GenericRpcHandler:
    """The generic handler to add to a `grpc.aio.server` (state of the world read and written
    at the wire level, `_discovery_wire`; delta with envoy-data-plane)."""
    sotw = {
        "request_deserializer": parse_discovery_request,
        "response_serializer": serialize_discovery_response,
    }
    delta = {"request_deserializer": DeltaDiscoveryRequest.parse, "response_serializer": bytes}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(ads.stream, **sotw),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(ads.delta, **delta),
        },
    )
