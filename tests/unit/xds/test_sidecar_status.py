"""SYNCED / STALE / NACK per sidecar, from the events its ADS streams report (plain values)."""

from __future__ import annotations

from meshwarden.xds._cache import SnapshotCache
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot
from meshwarden.xds._status import SidecarSync, SyncState, sidecar_sync

from .test_sotw_stream import BASE, snap

WEB = "shop/web"
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


def cache_serving(snapshot: Snapshot = BASE) -> SnapshotCache:
    cache = SnapshotCache(clock=lambda: 1_800_000_000.0)
    cache.set_snapshot(WEB, snapshot)
    return cache


def send_and_ack(cache: SnapshotCache, snapshot: Snapshot = BASE) -> None:
    for type_url in TYPES:
        cache.on_response(WEB, type_url, snapshot.version(type_url))
        cache.on_ack(WEB, type_url, snapshot.version(type_url))


def sync(cache: SnapshotCache) -> SidecarSync:
    return sidecar_sync(WEB, cache.snapshot(WEB), cache.status(WEB))


def test_a_sidecar_that_acked_every_type_of_the_current_snapshot_is_synced() -> None:
    cache = cache_serving()
    cache.on_connect(WEB)
    send_and_ack(cache)
    status = sync(cache)
    assert (status.state, status.reason) == (SyncState.SYNCED, "")
    listener = status.to_json()["types"]["Listener"]
    assert listener["current"] == listener["sent"] == listener["acked"] == BASE.version(LISTENER)
    assert status.to_json()["connectedSince"] == "2027-01-15T08:00:00+00:00"


def test_a_nack_names_the_type_version_and_envoys_message_until_a_newer_version_is_acked() -> None:
    cache = cache_serving()
    cache.on_connect(WEB)
    send_and_ack(cache)
    newer = snap(cluster_a="ca", endpoint_a="ea", listener_l="bad", route_r="rr")
    cache.set_snapshot(WEB, newer)
    cache.on_response(WEB, LISTENER, newer.version(LISTENER))
    cache.on_nack(WEB, LISTENER, newer.version(LISTENER), "cannot bind '10.9.0.1:80'")
    status = sync(cache)
    assert status.state is SyncState.NACK
    assert status.reason == f"Listener version {newer.version(LISTENER)}: cannot bind '10.9.0.1:80'"
    nack = status.to_json()["types"]["Listener"]["nack"]
    assert nack["error"] == "cannot bind '10.9.0.1:80'"
    assert status.to_json()["types"]["Listener"]["acked"] == BASE.version(LISTENER)

    fixed = snap(cluster_a="ca", endpoint_a="ea", listener_l="good", route_r="rr")
    cache.set_snapshot(WEB, fixed)
    send_and_ack(cache, fixed)
    assert sync(cache).state is SyncState.SYNCED


def test_a_version_sent_but_not_acked_is_stale_and_says_so() -> None:
    cache = cache_serving()
    cache.on_connect(WEB)
    send_and_ack(cache)
    newer = snap(cluster_a="ca2", endpoint_a="ea", listener_l="ll", route_r="rr")
    cache.set_snapshot(WEB, newer)
    cache.on_response(WEB, CLUSTER, newer.version(CLUSTER))
    status = sync(cache)
    assert status.state is SyncState.STALE
    assert status.reason == f"Cluster version {newer.version(CLUSTER)} sent, not yet ACKed"


def test_a_sidecar_without_an_open_stream_is_stale_even_if_it_acked_everything_before() -> None:
    cache = cache_serving()
    cache.on_connect(WEB)
    send_and_ack(cache)
    cache.on_disconnect(WEB)
    status = sync(cache)
    assert (status.state, status.reason) == (
        SyncState.STALE,
        "no ADS stream open to this control plane",
    )
    assert status.connected_since is None


def test_a_sidecar_that_never_connected_is_stale() -> None:
    status = sync(cache_serving())
    assert status.state is SyncState.STALE
    assert status.to_json()["types"]["RouteConfiguration"]["sent"] is None
