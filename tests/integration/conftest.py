"""A real Workload API endpoint (attesting Unix socket + grpc.aio) backed by a real CA."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    SystemClock,
    generate_key,
)
from meshwarden.identities._cache import CachedIdentity, IdentityCache
from meshwarden.identities._local_endpoint import LocalEndpoint
from meshwarden.identities._workload_api import workload_api_services

from .harness import LoopThread, public_tempdir, remove

TD = TrustDomain("example.org")
NOBODY_UID = 65534

REGISTRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("spiffe://example.org/ns/ops/sa/root-tool", ("unix:uid:0",)),
    ("spiffe://example.org/ns/ops/sa/root-admin", ("unix:uid:0", "unix:user:root")),
    ("spiffe://example.org/ns/shop/sa/nobody-app", (f"unix:uid:{NOBODY_UID}",)),
    ("spiffe://example.org/ns/ops/sa/wrong-binary", ("unix:uid:0", "unix:path:/bin/false")),
    ("spiffe://example.org/ns/ops/sa/no-selectors", ()),
)


@dataclass
class WorkloadApiFixture:
    loop: LoopThread
    ca: CertificateAuthority
    cache: IdentityCache
    endpoint: LocalEndpoint
    socket: Path

    def issue(self, registrations: Sequence[tuple[str, tuple[str, ...]]] = REGISTRATIONS) -> None:
        """Mint fresh SVIDs (new keys) for every registration and publish them to the cache."""
        identities = []
        for spiffe_id, selectors in registrations:
            key = generate_key()
            svid = self.ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
            svid = type(svid)(svid.spiffe_id, svid.chain, key)
            identities.append(CachedIdentity(svid.spiffe_id, selectors, svid))
        bundle = self.ca.bundle()
        self.loop.call(lambda: self.cache.update(identities, bundle))

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"


@pytest.fixture
def workload_api() -> Iterator[WorkloadApiFixture]:
    loop = LoopThread()
    directory = public_tempdir()
    ca = CertificateAuthority(CaConfig(TD, svid_ttl=dt.timedelta(minutes=10)), SystemClock())

    async def mint(spiffe_id: SpiffeId, audience: Sequence[str]) -> str:
        return ca.sign_jwt_svid(spiffe_id, audience).token

    cache = loop.call(IdentityCache)
    socket = directory / "agent.sock"
    endpoint = LocalEndpoint(socket, workload_api_services(cache, mint, SystemClock()))
    loop.run(endpoint.start())
    fixture = WorkloadApiFixture(loop, ca, cache, endpoint, socket)
    fixture.issue()
    try:
        yield fixture
    finally:
        loop.run(endpoint.stop(0))
        loop.close()
        remove(directory)
