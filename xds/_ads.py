"""The gRPC side of ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService`): state of the
world and delta. A thin adapter: it authorizes the stream's node against the mTLS peer, then
feeds Envoy's requests and the node's snapshot changes to a `SotwStream` / `DeltaStream` and
writes what they return. The configuration comes from a `ConfigWatcher`, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

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
PeerIdentity = Callable[[grpc.aio.ServicerContext], str | None]
Admitted = Callable[[str, grpc.aio.ServicerContext], None]
"""Told the node key of each admitted stream and its call (e.g. to note the certificate)."""


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

    async def stream(
        self, requests: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DiscoveryResponse]:
        first, node = await self._open(requests, context)
        machine = SotwStream(self._sotw_rejected.setdefault(node, {}))
        async for response in self._serve(node, machine, first, requests):
            yield response  # type: ignore[misc]

    async def delta(
        self, requests: AsyncIterator[DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DeltaDiscoveryResponse]:
        first, node = await self._open(requests, context)
        machine = DeltaStream(self._delta_rejected.setdefault(node, {}))
        async for response in self._serve(node, machine, first, requests):
            yield response  # type: ignore[misc]

    async def _open(
        self, requests: AsyncIterator[Request], context: grpc.aio.ServicerContext
    ) -> tuple[Request, str]:
        """The first request (it carries the node) and the node key it is authorized as."""
        first = await anext(requests, None)
        if first is None:
            await context.abort(grpc.StatusCode.CANCELLED, "stream closed before any request")
        assert first is not None
        peer = self._peer_identity(context)
        node_id = first.node.id if first.node else ""
        cluster = first.node.cluster if first.node else ""
        try:
            node = self._authorize(peer, node_id, cluster)
        except PermissionError as exc:
            log.warning("ADS stream refused: %s", exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if self._admitted is not None:
            self._admitted(node, context)
        return first, node

    async def _serve(
        self,
        node: str,
        machine: _Machine[Request],
        first: Request,
        requests: AsyncIterator[Request],
    ) -> AsyncIterator[DiscoveryResponse | DeltaDiscoveryResponse]:
        self._observer.on_connect(node)
        try:
            current = self._watcher.snapshot(node)
            if current is not None:
                machine.update(current)
            for response in self._emit(node, machine.receive(first)):
                yield response
            async for step in _steps(node, machine, requests, self._watcher):
                for response in self._emit(node, step):
                    yield response
        finally:
            self._observer.on_disconnect(node)

    def _emit(self, node: str, step: Step) -> list[DiscoveryResponse | DeltaDiscoveryResponse]:
        report(self._observer, node, step.events)
        for event in step.events:
            log.debug("ADS %s -> %s", node, event)
        return step.responses


async def _steps(
    node: str, machine: _Machine[Request], requests: AsyncIterator[Request], watcher: ConfigWatcher
) -> AsyncIterator[Step]:
    """Steps from the stream's requests and the node's snapshot changes, in arrival order,
    until Envoy half-closes the stream."""
    inbox: asyncio.Queue[Request | None] = asyncio.Queue()
    reader = asyncio.create_task(_drain(requests, inbox))
    change = asyncio.ensure_future(watcher.changed(node, machine.snapshot))
    get = asyncio.ensure_future(inbox.get())
    try:
        while True:
            await asyncio.wait({get, change}, return_when=asyncio.FIRST_COMPLETED)
            if change.done():
                snapshot = change.result()
                change = asyncio.ensure_future(watcher.changed(node, snapshot))
                yield machine.update(snapshot)
            if not get.done():  # (re-checked: it may have finished while we yielded)
                continue
            request, get = get.result(), asyncio.ensure_future(inbox.get())
            if request is None:
                return
            log.debug("ADS %s <- %s", node, _describe(request))
            yield machine.receive(request)
    finally:
        for task in (reader, change, get):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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


async def _drain(requests: AsyncIterator[Request], inbox: asyncio.Queue[Request | None]) -> None:
    try:
        async for request in requests:
            await inbox.put(request)
    finally:
        await inbox.put(None)


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
