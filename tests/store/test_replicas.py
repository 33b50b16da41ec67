"""Replicas on one etcd store: they serve the same revision with the same xDS versions, share
one CA (rotated by exactly one of them), redeem a join token once between them, and ride out
the loss of etcd (or of its leader) without failing open."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess

import grpc
import pytest
from meshwarden.engine import SpiffeId
from meshwarden.identities import (
    AttestationError,
    ManualClock,
    SvidValidationError,
    generate_key,
    spiffe_id_of,
    verify_x509_svid,
)
from meshwarden.identities._node_client import attest, make_csr, node_stub, open_channel
from meshwarden.protos import node_pb2 as pb

from meshwarden.cli import main

from ..integration.harness import wait_for
from .replicas import Replicas, replicas, shop_files

BACKEND = SpiffeId.parse("spiffe://example.org/ns/shop/sa/backend")
# one more rule for the backend: a revision whose backend plan differs from the shop's
OPEN_METRICS = """
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: metrics, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  rules:
  - from:
    - namespaces: [ops]
    to:
    - paths: [/metrics]
"""


def _versions(group: Replicas, index: int) -> dict[str, dict[str, str]]:
    """Every node's versions, read on the replicas' loop (where the cache is written), so a
    reading never sees half of a push."""
    cache = group.planes[index].xds.cache

    def read() -> dict[str, dict[str, str]]:
        out = {}
        for node in sorted(cache.nodes()):
            snapshot = cache.snapshot(node)
            assert snapshot is not None
            out[node] = {t: snapshot.version(t) for t in snapshot.resources}
        return out

    return group.loop.call(read)


def test_replicas_serve_each_applied_revision_with_identical_xds_versions(etcd):
    with replicas(etcd, 2) as group:
        served = group.wait_served(1)
        first = _versions(group, 0)
        assert first and first == _versions(group, 1)
        revision = group.apply(shop_files(OPEN_METRICS), "metrics for ops")
        group.wait_served(revision, served)
        wait_for(lambda: _versions(group, 0) == _versions(group, 1) != first)
        changed = _versions(group, 0)
        assert changed["shop/backend-1"] != first["shop/backend-1"]
        assert changed["shop/db-1"] == first["shop/db-1"]  # untouched workloads keep versions
        report = group.health(1)
        assert report["store"]["revision"] == revision and report["store"]["reachable"]


def test_fifty_concurrent_redemptions_of_one_join_token_over_replicas_admit_exactly_one(etcd):
    with replicas(etcd, 2) as group:
        planes = group.planes
        token = group.loop.run(planes[0].replica.tokens.create("web-1", dt.timedelta(minutes=5)))
        roots = planes[0].ca.bundle().x509_pem()
        servers = [f"127.0.0.1:{p.endpoint.port}" for p in planes]

        async def redeem_everywhere() -> list[object]:
            """50 TLS connections over both replicas, connected ten at a time (the TLS front
            gives a handshake 10 s), then 50 Attest calls with the one token at once."""
            channels = [open_channel(servers[n % 2], roots, None) for n in range(50)]
            for first in range(0, 50, 10):
                await asyncio.gather(*(c.channel_ready() for c in channels[first : first + 10]))
            calls = [
                node_stub(c).Attest(
                    pb.AttestRequest(join_token=token, csr=make_csr(generate_key())), timeout=30
                )
                for c in channels
            ]
            try:
                return await asyncio.gather(*calls, return_exceptions=True)
            finally:
                await asyncio.gather(*(c.close() for c in channels))

        results = group.loop.run(redeem_everywhere(), timeout=120)
        admitted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(admitted) == 1, [str(r) for r in refused]
        assert all(
            isinstance(r, grpc.aio.AioRpcError) and "already used" in r.details() for r in refused
        ), [str(r) for r in refused]


def test_a_replica_that_loses_etcd_keeps_serving_refuses_writes_and_catches_up(etcd):
    with replicas(etcd, 1) as group:
        served = group.wait_served(1)
        plane = group.planes[0]
        token = group.loop.run(plane.replica.tokens.create("web-1", dt.timedelta(minutes=5)))
        for member in etcd.members:
            member.kill()
        wait_for(lambda: not group.health(0)["store"]["reachable"], timeout=60)
        report = group.health(0)
        assert report["status"] == "degraded" and report["store"]["writes"] == "refused"
        assert report["policyVersion"] == served and _versions(group, 0)
        server = f"127.0.0.1:{plane.endpoint.port}"
        with pytest.raises(AttestationError, match="try another server"):
            group.loop.run(attest(server, plane.ca.bundle().x509_pem(), token), timeout=60)
        for member in etcd.members:
            etcd.start(member)
        etcd.wait_healthy()
        wait_for(lambda: group.health(0)["store"]["reachable"], timeout=60)
        revision = group.apply(shop_files(OPEN_METRICS), "after the outage")
        assert group.wait_served(revision, served) == group.health(0)["policyVersion"]
        node = group.loop.run(attest(server, plane.ca.bundle().x509_pem(), token), timeout=30)
        assert str(spiffe_id_of(node.chain[0])).endswith("/meshwarden/node/web-1")


def test_writes_resume_and_replicas_follow_after_the_etcd_leader_is_killed(etcd3):
    with replicas(etcd3, 2) as group:
        served = group.wait_served(1)
        etcd3.leader().kill()
        revision = group.apply(shop_files(OPEN_METRICS), "after the election")
        assert revision == 2
        group.wait_served(revision, served, timeout=60)
        assert all(group.health(n)["store"]["reachable"] for n in (0, 1))


def _svid_pem(group: Replicas, index: int) -> tuple[list[object], bytes]:
    key = generate_key()
    svid = group.planes[index].ca.sign_x509_svid(key.public_key(), BACKEND)
    from cryptography.hazmat.primitives.serialization import Encoding

    return list(svid.chain), b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain)


def _openssl_accepts(group: Replicas, chain_pem: bytes, bundle_pem: bytes, at: int) -> bool:
    roots, leaf = group.root / "roots.pem", group.root / "leaf.pem"
    roots.write_bytes(bundle_pem)
    leaf.write_bytes(chain_pem)
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-attime",
            str(at),
            "-CAfile",
            str(roots),
            "-untrusted",
            str(leaf),
            str(leaf),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode == 0


def _check_every_svid_validates_everywhere(group: Replicas, clock: ManualClock) -> None:
    now = clock.now()
    for signer in (0, 1):
        chain, pem = _svid_pem(group, signer)
        for verifier in (0, 1):
            bundle = group.planes[verifier].ca.bundle()
            assert verify_x509_svid(chain, bundle, now) == BACKEND  # type: ignore[arg-type]
            assert _openssl_accepts(group, pem, bundle.x509_pem(), int(now.timestamp()))


def test_ca_rotation_is_prepared_by_one_replica_and_svids_of_every_replica_validate(etcd):
    clock = ManualClock(dt.datetime.now(dt.UTC))
    with replicas(etcd, 2, clock=clock, run=False) as group:

        def tick_all() -> None:
            for plane in group.planes:
                group.loop.run(_tick(plane))

        first = group.planes[0].ca.bundle()
        assert group.planes[1].ca.bundle() == first and len(first.x509_authorities) == 1
        _check_every_svid_validates_everywhere(group, clock)
        clock.advance(dt.timedelta(hours=12, minutes=1))  # past half-life: prepare the next CA
        tick_all()
        tick_all()
        prepared = [p.ca.bundle() for p in group.planes]
        assert prepared[0] == prepared[1]
        assert len(prepared[0].x509_authorities) == 2, "one new CA, prepared by one replica"
        assert prepared[0].sequence == first.sequence + 1
        _check_every_svid_validates_everywhere(group, clock)
        clock.advance(dt.timedelta(hours=8))  # past the activation point: sign with the new CA
        tick_all()
        tick_all()
        active = [p.ca.x509.active().certificate for p in group.planes]
        assert active[0] == active[1] == prepared[0].x509_authorities[1]
        _check_every_svid_validates_everywhere(group, clock)
        old = first.x509_authorities[0]
        clock.advance(dt.timedelta(hours=4))  # the old CA expired: gone from every bundle
        tick_all()
        tick_all()
        for plane in group.planes:
            assert old not in plane.ca.bundle().x509_authorities
        chain, _ = _svid_pem(group, 0)
        with pytest.raises(SvidValidationError):
            verify_x509_svid(chain, first, clock.now())  # type: ignore[arg-type]


async def _tick(plane: object) -> None:
    assert plane.replica is not None  # type: ignore[attr-defined]
    plane.rotate(await plane.replica.sync_ca())  # type: ignore[attr-defined]


def test_a_cli_token_attests_on_one_replica_and_the_node_is_known_to_another(etcd, capsys):
    with replicas(etcd, 2) as group:
        planes = group.planes
        assert main(["token", "create", "--store", etcd.url, "--node", "web-1"]) == 0
        token = capsys.readouterr().out.strip()
        assert main(["ca", "bundle", "--store", etcd.url]) == 0
        roots = capsys.readouterr().out.encode()
        assert roots == planes[1].ca.bundle().x509_pem()
        node = group.loop.run(attest(f"127.0.0.1:{planes[0].endpoint.port}", roots, token))

        async def sync_with(index: int) -> str:
            channel = open_channel(f"127.0.0.1:{planes[index].endpoint.port}", roots, node)
            async with channel:
                reply = await node_stub(channel).Sync(pb.SyncRequest(), timeout=10)
                return str(reply.bundle)

        assert group.loop.run(sync_with(1)) == planes[1].ca.bundle().to_spiffe_json()
