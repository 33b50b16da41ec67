"""A sidecar started from `meshwarden bootstrap`'s config (real Envoy, certificates and bundle
from our SDS) talks ADS only to a control plane proving exactly
`spiffe://<trust domain>/meshwarden/server`: a server presenting another identity of the same
trust domain (a workload's SVID from the same CA) gets no stream and configures nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from meshwarden.engine import SpiffeId
from meshwarden.identities import (
    CachedIdentity,
    IdentityCache,
    LocalEndpoint,
    X509Svid,
    caller_selectors,
    generate_key,
)
from meshwarden.xds._bootstrap import XDS_CLUSTER, bootstrap
from meshwarden.xds._sds import sds_handler

from ..integration.harness import LoopThread, wait_for
from ._ads_harness import NODE, WEB_ID, AdsServer, Pki, WebConfig, web_snapshot
from .conftest import RunningEnvoy

pytestmark = pytest.mark.e2e
StartEnvoy = Callable[[dict[str, Any]], RunningEnvoy]


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.close()


@pytest.fixture
def pki() -> Pki:
    return Pki()


@pytest.fixture
def sds_socket(loop: LoopThread, pki: Pki, tmp_path: Path) -> Iterator[Path]:
    """The agent's SDS: the sidecar (running as root) gets the web workload's SVID."""
    key = generate_key()
    svid = pki.ca.sign_x509_svid(key.public_key(), SpiffeId.parse(WEB_ID))
    identity = CachedIdentity(
        svid.spiffe_id, ("unix:uid:0",), X509Svid(svid.spiffe_id, svid.chain, key)
    )
    cache = loop.call(IdentityCache)
    loop.call(lambda: cache.update([identity], pki.ca.bundle()))

    def add(server: Any) -> None:
        server.add_generic_rpc_handlers((sds_handler(cache, caller_selectors),))

    endpoint = LocalEndpoint(tmp_path / "sds.sock", add, mode=0o600)
    loop.run(endpoint.start())
    yield tmp_path / "sds.sock"
    loop.run(endpoint.stop(0))


def _sidecar(envoy: StartEnvoy, ads: AdsServer, sds_socket: Path) -> RunningEnvoy:
    ads.publish(web_snapshot(WebConfig("127.0.0.1", 1, 1)))
    config = bootstrap(NODE, "127.0.0.1", ads.port, str(sds_socket), trust_domain="example.org")
    return envoy(config)


@pytest.mark.parametrize("impostor", [None, WEB_ID, "spiffe://example.org/ns/ops/sa/tool"])
def test_a_sidecar_accepts_only_the_exact_server_id(
    envoy: StartEnvoy,
    loop: LoopThread,
    pki: Pki,
    sds_socket: Path,
    tmp_path: Path,
    impostor: str | None,
) -> None:
    ads = AdsServer(loop, pki, impostor=impostor)
    try:
        proxy = _sidecar(envoy, ads, sds_socket)
        if impostor is None:  # the real control plane: the sidecar ACKs its configuration
            loop.run(asyncio.wait_for(ads.cache.wait_applied([NODE]), 60), timeout=70)
            return
        refused = f"cluster.{XDS_CLUSTER}.ssl.fail_verify_san"
        wait_for(lambda: proxy.stat(refused) >= 1, timeout=60)
        assert proxy.stat(f"cluster.{XDS_CLUSTER}.ssl.handshake") == 0
        assert ads.read(lambda c: (c.status(NODE).streams, c.status(NODE).acked)) == (0, {})
    finally:
        ads.stop()
