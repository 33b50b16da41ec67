"""SnapshotCache (change notification, status, observers) and node authorization."""

from __future__ import annotations

import asyncio

import pytest
from meshwarden.xds._cache import Rejection, SnapshotCache
from meshwarden.xds._node_auth import registry_authorizer, workload_authorizer
from meshwarden.xds._snapshot import CLUSTER, LISTENER

from .test_snapshot_reuse import changed, doc, mesh_text
from .test_sotw_stream import snap

WEB, WEB_ID = "shop/web", "spiffe://example.org/ns/shop/sa/web"


def test_a_watch_is_called_with_each_new_snapshot_of_its_node_until_stopped() -> None:
    cache = SnapshotCache()
    seen: list[object] = []
    unwatch = cache.watch(WEB, seen.append)
    cache.set_snapshot("shop/other", snap(cluster_a="x"))
    assert seen == []
    first, second = snap(cluster_a="1"), snap(cluster_a="2")
    cache.set_snapshot(WEB, first)
    cache.set_snapshot(WEB, second)
    assert seen == [first, second]
    assert cache.watching(WEB) == 1
    unwatch()
    unwatch()  # twice is harmless
    cache.set_snapshot(WEB, snap(cluster_a="3"))
    assert seen == [first, second]
    assert cache.watching(WEB) == 0


def test_cleared_nodes_have_no_snapshot() -> None:
    cache = SnapshotCache()
    cache.set_snapshot(WEB, snap(cluster_a="1"))
    cache.clear(WEB)
    assert cache.snapshot(WEB) is None
    assert cache.nodes() == frozenset()


def test_applied_needs_an_open_stream_that_acked_every_type_of_the_snapshot() -> None:
    cache = SnapshotCache()
    snapshot = snap(cluster_a="1", listener_l="1")
    cache.set_snapshot(WEB, snapshot)
    cache.on_connect(WEB)
    cache.on_ack(WEB, CLUSTER, snapshot.version(CLUSTER))
    assert not cache.applied(WEB)
    cache.on_ack(WEB, LISTENER, snapshot.version(LISTENER))
    assert cache.applied(WEB)
    cache.set_snapshot(WEB, snap(cluster_a="2", listener_l="1"))
    assert not cache.applied(WEB)
    cache.on_disconnect(WEB)
    assert cache.status(WEB).streams == 0


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def on_connect(self, node: str) -> None:
        self.events.append(("connect", node))

    def on_ack(self, node: str, type_url: str, version: str) -> None:
        self.events.append(("ack", node, version))

    def on_nack(self, node: str, type_url: str, version: str, error_message: str) -> None:
        self.events.append(("nack", node, version, error_message))

    def on_response(self, node: str, type_url: str, version: str, nonce: str = "") -> None:
        self.events.append(("response", node, version))

    def on_disconnect(self, node: str) -> None:
        self.events.append(("disconnect", node))


def test_observers_get_every_stream_event_until_they_stop() -> None:
    cache = SnapshotCache()
    recorder = Recorder()
    stop = cache.observe(recorder)
    cache.on_connect(WEB)
    cache.on_response(WEB, LISTENER, "v2")
    cache.on_nack(WEB, LISTENER, "v2", "bad port")
    stop()
    cache.on_disconnect(WEB)
    assert recorder.events == [
        ("connect", WEB),
        ("response", WEB, "v2"),
        ("nack", WEB, "v2", "bad port"),
    ]
    assert cache.status(WEB).rejections == [Rejection(LISTENER, "v2", "bad port")]
    assert cache.status(WEB).responses == {LISTENER: 1}


def test_a_peer_may_act_only_as_the_workload_its_spiffe_id_belongs_to() -> None:
    authorize = workload_authorizer(lambda: {WEB: WEB_ID, "shop/db": "spiffe://x/ns/shop/sa/db"})
    assert authorize(WEB_ID, WEB, "shop") == WEB
    with pytest.raises(PermissionError, match="belongs to spiffe://x/ns/shop/sa/db"):
        authorize(WEB_ID, "shop/db", "shop")
    with pytest.raises(PermissionError, match="not a registered workload"):
        authorize(WEB_ID, "shop/ghost", "shop")
    with pytest.raises(PermissionError, match="no client certificate"):
        authorize(None, WEB, "shop")


def test_wait_applied_returns_once_every_node_acked_its_snapshot() -> None:
    async def scenario() -> None:
        cache = SnapshotCache()
        web, db = snap(cluster_a="w"), snap(cluster_a="d")
        cache.set_snapshot(WEB, web)
        cache.set_snapshot("shop/db", db)
        waiting = asyncio.create_task(cache.wait_applied([WEB, "shop/db"]))
        cache.on_connect(WEB)
        cache.on_ack(WEB, CLUSTER, web.version(CLUSTER))
        await asyncio.sleep(0)
        assert not waiting.done()
        cache.on_connect("shop/db")
        cache.on_ack("shop/db", CLUSTER, db.version(CLUSTER))
        await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())


def test_the_registry_authorizer_reads_the_live_registry() -> None:
    """`registry_authorizer` (what the ADS and access-log services use) looks each node up in
    the registry current at the call: a workload added later is admitted, a removed one is
    refused, and a workload's certificate never stands for another's."""
    first = changed(None, mesh_text())
    current = [first.registry]
    authorize = registry_authorizer(lambda: current[0])
    primary = "spiffe://example.org/ns/shop/sa/db-primary"
    assert authorize(primary, "shop/db-1", "shop") == "shop/db-1"
    with pytest.raises(PermissionError, match="belongs to"):
        authorize(primary, "shop/db-2", "shop")
    with pytest.raises(PermissionError, match="not a registered workload"):
        authorize(primary, "shop/db-3", "shop")
    extra = doc(
        "Workload",
        "{name: db-3, namespace: shop, labels: {app: db, tier: replica}}",
        "{serviceAccount: db-primary, addresses: [127.0.0.14], ports: [{port: 5432}]}",
    )
    current[0] = changed(first, mesh_text() + extra).registry
    assert authorize(primary, "shop/db-3", "shop") == "shop/db-3"
    current[0] = changed(first, mesh_text().replace("name: db-1,", "name: db-9,")).registry
    with pytest.raises(PermissionError, match="not a registered workload"):
        authorize(primary, "shop/db-1", "shop")
