"""The grpc.aio adapter, driven in memory: request streams are async iterators, the context
only answers `abort` (the real mTLS path is covered with Envoy in tests/e2e)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshwarden.xds._ads import AggregatedDiscovery
from meshwarden.xds._cache import SnapshotCache
from meshwarden.xds._node_auth import workload_authorizer
from meshwarden.xds._snapshot import CLUSTER, LISTENER

from .test_sotw_stream import snap

WEB, WEB_ID = "shop/web", "spiffe://example.org/ns/shop/sa/web"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Envoyish:
    """A client that ACKs every response at once, as Envoy does."""

    def __init__(self, node_id: str = WEB) -> None:
        self.requests: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
        self.responses: list[DiscoveryResponse] = []
        self.node = Node(id=node_id, cluster="shop")

    async def stream(self) -> AsyncIterator[DiscoveryRequest]:
        while (request := await self.requests.get()) is not None:
            yield request

    def ask(self, type_url: str) -> None:
        self.requests.put_nowait(DiscoveryRequest(node=self.node, type_url=type_url))

    async def run(self, ads: AggregatedDiscovery, peer: str | None = WEB_ID) -> None:
        ads._peer_identity = lambda context: peer
        async for response in ads.stream(self.stream(), Context()):  # type: ignore[arg-type]
            self.responses.append(response)
            ack = DiscoveryRequest(
                type_url=response.type_url,
                response_nonce=response.nonce,
                version_info=response.version_info,
            )
            self.requests.put_nowait(ack)
            await asyncio.sleep(0)  # as a real write: other tasks run while the server waits


def server(cache: SnapshotCache) -> AggregatedDiscovery:
    return AggregatedDiscovery(cache, workload_authorizer(lambda: {WEB: WEB_ID}), cache)


async def settle(predicate: object, timeout: float = 5) -> None:
    async def wait() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.001)

    await asyncio.wait_for(wait(), timeout)


def test_every_ack_is_seen_while_snapshots_keep_changing() -> None:
    async def scenario() -> None:
        cache = SnapshotCache()
        cache.set_snapshot(WEB, snap(cluster_a="0", listener_l="0"))
        envoy = Envoyish()
        envoy.ask(CLUSTER)
        envoy.ask(LISTENER)
        task = asyncio.create_task(envoy.run(server(cache)))
        for n in range(1, 10):
            await settle(lambda: cache.applied(WEB), timeout=2)
            cache.set_snapshot(WEB, snap(cluster_a=str(n), listener_l=str(n)))
        await settle(lambda: cache.applied(WEB), timeout=2)
        assert cache.status(WEB).acked[CLUSTER] == snap(cluster_a="9").version(CLUSTER)
        envoy.requests.put_nowait(None)
        await task
        assert cache.status(WEB).streams == 0

    asyncio.run(scenario())


def test_a_node_id_of_another_workload_is_refused_before_anything_is_sent() -> None:
    async def scenario() -> None:
        cache = SnapshotCache()
        cache.set_snapshot(WEB, snap(cluster_a="a"))
        envoy = Envoyish()
        envoy.ask(CLUSTER)
        with pytest.raises(Aborted) as refused:
            await envoy.run(server(cache), peer="spiffe://example.org/ns/shop/sa/other")
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert envoy.responses == []
        assert cache.status(WEB).streams == 0

    asyncio.run(scenario())


def test_a_stream_waits_for_the_nodes_first_snapshot() -> None:
    async def scenario() -> None:
        cache = SnapshotCache()
        envoy = Envoyish()
        envoy.ask(CLUSTER)
        task = asyncio.create_task(envoy.run(server(cache)))
        await settle(lambda: cache.status(WEB).streams == 1)
        assert envoy.responses == []
        cache.set_snapshot(WEB, snap(cluster_a="a"))
        await settle(lambda: cache.applied(WEB))
        envoy.requests.put_nowait(None)
        await task

    asyncio.run(scenario())
