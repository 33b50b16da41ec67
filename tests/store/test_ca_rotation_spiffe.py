"""A CA rotation with two replicas, seen by a workload through the SPIFFE Workload API: the
agent's Workload API serves an SVID signed by each replica, and a py-spiffe `X509Source` kept
open on its socket throughout gets each new state pushed. At every step (before, prepared,
activated, old CA gone) every SVID it holds chains, by openssl, to the bundle the same source
got, whichever replica signed it and whichever replica's bundle the agent published."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId
from meshwarden.identities import ManualClock, generate_key
from meshwarden.identities._cache import CachedIdentity, IdentityCache
from meshwarden.identities._local_endpoint import LocalEndpoint
from meshwarden.identities._workload_api import workload_api_services
from spiffe import WorkloadApiClient, X509Source

from ..integration.harness import public_tempdir, remove, wait_for
from .replicas import Replicas, replicas
from .test_replicas import _openssl_accepts, _tick

SIGNED_BY = [SpiffeId.parse(f"spiffe://example.org/ns/shop/sa/by-replica-{n}") for n in (0, 1)]
SELECTORS = (f"unix:uid:{os.getuid()}",)  # this test process, on the socket


def _publish(group: Replicas, cache: IdentityCache, bundle_from: int) -> set[int]:
    """An SVID from each replica, and replica `bundle_from`'s bundle, into the agent's cache;
    the serial numbers published."""
    identities = []
    for plane, spiffe_id in zip(group.planes, SIGNED_BY, strict=True):
        key = generate_key()
        svid = plane.ca.sign_x509_svid(key.public_key(), spiffe_id)
        svid = type(svid)(svid.spiffe_id, svid.chain, key)
        identities.append(CachedIdentity(spiffe_id, SELECTORS, svid))
    bundle = group.planes[bundle_from].ca.bundle()
    group.loop.call(lambda: cache.update(identities, bundle))
    return {i.svid.leaf.serial_number for i in identities}


def _pem(certificates: Sequence[object]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certificates)  # type: ignore[attr-defined]


def _source(socket: str, wanted: SpiffeId) -> X509Source:
    """A py-spiffe source that keeps the SVID of `wanted` (one per replica that signs)."""

    def pick(svids: Sequence[Any]) -> Any:
        return next(s for s in svids if str(s.spiffe_id) == str(wanted))

    client = WorkloadApiClient(f"unix://{socket}")
    return X509Source(workload_api_client=client, timeout_in_seconds=10, svid_picker=pick)


def _step(
    group: Replicas, cache: IdentityCache, sources: list[X509Source], clock: ManualClock
) -> bytes:
    """Every replica ticks twice (one writes the rotation step, the other adopts it); then the
    agent publishes fresh SVIDs and each source must validate its own. The bundle (PEM)."""
    for _ in range(2):
        for plane in group.planes:
            group.loop.run(_tick(plane))
    assert group.planes[0].ca.bundle() == group.planes[1].ca.bundle()
    serials = _publish(group, cache, bundle_from=int(clock.now().timestamp()) % 2)

    def received() -> set[int]:
        return {s.get_x509_context().default_svid.leaf.serial_number for s in sources}

    wait_for(lambda: received() == serials, timeout=30)
    at, bundles = int(clock.now().timestamp()), set()
    for source in sources:
        context = source.get_x509_context()
        bundle = context.x509_bundle_set.get_bundle_for_trust_domain(SIGNED_BY[0].trust_domain)
        assert bundle is not None
        roots = _pem(sorted(bundle.x509_authorities, key=lambda c: c.serial_number))
        chain = _pem(context.default_svid.cert_chain)
        assert _openssl_accepts(group, chain, roots, at), context.default_svid.spiffe_id
        bundles.add(roots)
    assert len(bundles) == 1
    return bundles.pop()


def test_py_spiffe_validates_svids_of_every_replica_throughout_a_ca_rotation(etcd):
    clock = ManualClock(dt.datetime.now(dt.UTC))
    directory = public_tempdir()
    with replicas(etcd, 2, clock=clock, run=False) as group:

        async def mint(spiffe_id: SpiffeId, audience: Sequence[str]) -> str:
            return group.planes[0].ca.sign_jwt_svid(spiffe_id, audience).token

        cache = group.loop.call(IdentityCache)
        socket = directory / "agent.sock"
        endpoint = LocalEndpoint(socket, workload_api_services(cache, mint, clock))
        group.loop.run(endpoint.start())
        _publish(group, cache, 0)
        sources = [_source(str(socket), spiffe_id) for spiffe_id in SIGNED_BY]
        try:
            first = _step(group, cache, sources, clock)
            clock.advance(dt.timedelta(hours=12, minutes=1))  # half-life: next CA prepared
            prepared = _step(group, cache, sources, clock)
            assert prepared.count(b"BEGIN CERTIFICATE") == 2 and first in prepared
            clock.advance(dt.timedelta(hours=8))  # activated: SVIDs come from the new CA
            _step(group, cache, sources, clock)
            at = int(clock.now().timestamp())
            for source in sources:
                chain = _pem(source.get_x509_context().default_svid.cert_chain)
                assert not _openssl_accepts(group, chain, first, at)
            clock.advance(dt.timedelta(hours=4))  # the old CA expired: gone from the bundle
            last = _step(group, cache, sources, clock)
            assert first not in last
        finally:
            for source in sources:
                source.close()
            group.loop.run(endpoint.stop(0))
            remove(directory)
