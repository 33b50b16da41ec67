"""The grpc.aio adapter, driven in memory: the context answers `read`, `write` and `abort` as
grpc.aio's reader/writer API does (the real mTLS path is covered with Envoy in tests/e2e)."""

from __future__ import annotations

import asyncio
import contextlib

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
    """grpc.aio's reader/writer API over an `Envoyish` client."""

    def __init__(self, envoy: Envoyish) -> None:
        self.envoy = envoy

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    async def read(self) -> DiscoveryRequest | object:
        request = await self.envoy.requests.get()
        return grpc.aio.EOF if request is None else request

    async def write(self, response: DiscoveryResponse) -> None:
        await self.envoy.written(response)


class Envoyish:
    """A client that ACKs every response at once, as Envoy does."""

    def __init__(self, node_id: str = WEB) -> None:
        self.requests: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
        self.responses: list[DiscoveryResponse] = []
        self.node = Node(id=node_id, cluster="shop")

    def ask(self, type_url: str) -> None:
        self.requests.put_nowait(DiscoveryRequest(node=self.node, type_url=type_url))

    async def written(self, response: DiscoveryResponse) -> None:
        self.responses.append(response)
        ack = DiscoveryRequest(
            type_url=response.type_url,
            response_nonce=response.nonce,
            version_info=response.version_info,
        )
        self.requests.put_nowait(ack)
        await asyncio.sleep(0)  # as a real write: other tasks run while the server waits

    async def run(self, ads: AggregatedDiscovery, peer: str | None = WEB_ID) -> None:
        ads._peer_identity = lambda context: peer
        await ads.stream(None, Context(self))


def server(cache: SnapshotCache) -> AggregatedDiscovery:
    return AggregatedDiscovery(cache, workload_authorizer(lambda: {WEB: WEB_ID}), cache)


async def connected(cache: SnapshotCache, *types: str) -> tuple[Envoyish, asyncio.Task[None]]:
    """A stream of WEB that asked for `types` and ACKed its first config."""
    envoy = Envoyish()
    for type_url in types:
        envoy.ask(type_url)
    task = asyncio.create_task(envoy.run(server(cache)))
    await settle(lambda: cache.applied(WEB))
    return envoy, task


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


def left_over_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


@pytest.mark.parametrize("end", ["half-close", "cancel"])
def test_a_stream_that_ends_leaves_no_watch_and_no_task_behind(end: str) -> None:
    async def scenario() -> None:
        cache = SnapshotCache()
        cache.set_snapshot(WEB, snap(cluster_a="0", listener_l="0"))
        envoy, task = await connected(cache, CLUSTER, LISTENER)
        assert cache.watching(WEB) == 1
        if end == "half-close":
            envoy.requests.put_nowait(None)
        else:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert cache.watching(WEB) == 0
        assert cache.status(WEB).streams == 0
        cache.set_snapshot(WEB, snap(cluster_a="1", listener_l="1"))
        await asyncio.sleep(0)
        assert left_over_tasks() == set()
        assert len(envoy.responses) == 2  # nothing was written after the end

    asyncio.run(scenario())


def test_a_stream_cancelled_while_a_pushed_change_is_being_written_releases_everything() -> None:
    async def scenario() -> None:
        cache = SnapshotCache()
        cache.set_snapshot(WEB, snap(cluster_a="0"))
        envoy, task = await connected(cache, CLUSTER)
        stuck = asyncio.Event()

        async def never_done(response: DiscoveryResponse) -> None:
            stuck.set()
            await asyncio.Event().wait()  # a peer that stopped reading

        envoy.written = never_done  # type: ignore[method-assign]
        cache.set_snapshot(WEB, snap(cluster_a="1"))
        await asyncio.wait_for(stuck.wait(), 5)
        assert len(left_over_tasks()) == 2  # the handler and the write of the pushed change
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert cache.watching(WEB) == 0
        assert cache.status(WEB).streams == 0
        assert left_over_tasks() == set()

    asyncio.run(scenario())


def test_changes_and_requests_are_answered_in_arrival_order() -> None:
    async def scenario() -> None:
        cache = SnapshotCache()
        cache.set_snapshot(WEB, snap(cluster_a="0", listener_l="0"))
        envoy, task = await connected(cache, CLUSTER, LISTENER)
        for n in range(1, 4):  # changes that come faster than the stream writes
            cache.set_snapshot(WEB, snap(cluster_a=str(n), listener_l=str(n)))
            await asyncio.sleep(0)
        await settle(lambda: cache.applied(WEB))
        versions = [(r.type_url, r.version_info) for r in envoy.responses]
        assert versions[-2:] == [
            (CLUSTER, snap(cluster_a="3").version(CLUSTER)),
            (LISTENER, snap(listener_l="3").version(LISTENER)),
        ]
        assert [int(r.nonce) for r in envoy.responses] == list(range(1, len(versions) + 1))
        envoy.requests.put_nowait(None)
        await task

    asyncio.run(scenario())
