"""The node agent: keeps an `IdentityCache` filled with SVIDs for the Workloads its node may
serve. Every workload key is generated here; only CSRs go to the server. SVIDs are renewed at
half their lifetime (with jitter), and at once when their CA leaves the bundle."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from meshwarden.engine import SpiffeId
from meshwarden.identities._bundle import TrustBundle
from meshwarden.identities._cache import CachedIdentity, IdentityCache
from meshwarden.identities._clock import Clock
from meshwarden.identities._errors import AttestationError, IdentityError, IssuanceError
from meshwarden.identities._keys import generate_key
from meshwarden.identities._node_client import (
    NodeCredentials,
    Resolve,
    attest,
    channel_target,
    make_csr,
    node_stub,
    open_channel,
    renew,
    system_resolve,
)
from meshwarden.identities._outlook import IdentityHealth, identity_health
from meshwarden.identities._validate import X509Svid
from meshwarden.protos import node_pb2 as pb
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("meshwarden.agent")


RETRY_FIRST_SECONDS = 0.5  # after a failed sync: 0.5 s, 1 s, 2 s, ... up to the sync interval


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


@dataclass(frozen=True)
class AgentConfig:
    """Where the agent finds the server, where it keeps its state, how often it syncs."""

    server: str
    data_dir: Path
    sync_interval: float = 5.0
    packet_filter_format: str = ""  # "nftables": fetch the node's packet filter on every sync


def renewal_due(svid: X509Svid, now: dt.datetime, jitter: float) -> bool:
    """Half-life ± `jitter` (a fraction, e.g. 0.1) of the SVID's lifetime has passed."""
    leaf = svid.leaf
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    return bool(now >= leaf.not_valid_before_utc + lifetime * (0.5 + jitter))


@dataclass
class _JwtCache:
    tokens: dict[tuple[str, tuple[str, ...]], tuple[str, dt.datetime]] = field(default_factory=dict)


class Agent:
    """The node agent: attests the node to the server, keeps workload SVIDs fresh in the cache."""

    def __init__(
        self,
        config: AgentConfig,
        cache: IdentityCache,
        clock: Clock,
        resolve: Resolve = system_resolve,
    ) -> None:
        self.config = config
        self.cache = cache
        self.clock = clock
        self.resolve = resolve  # the server names' addresses, asked again on every reconnect
        self.node: NodeCredentials | None = None
        self._channel: grpc.aio.Channel | None = None
        self.target: str | None = None  # the addresses the channel goes to
        self._jwt = _JwtCache()
        self._jitter: dict[SpiffeId, float] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.failures = 0  # syncs failed in a row
        self.last_sync_error: str | None = None
        # Called with the node's packet filter after each sync (with packet_filter_format).
        self.on_packet_filter: Callable[[str], Awaitable[None]] | None = None

    async def start(self, server_roots_pem: bytes | None, join_token: str | None) -> None:
        """Load the saved node identity, or attest with the join token; then sync once."""
        node = NodeCredentials.load(self.config.data_dir)
        if node is not None and node.expires_at <= self.clock.now():
            log.warning("saved node SVID expired at %s; attesting again", node.expires_at)
            node = None
        if node is None:
            if not join_token or server_roots_pem is None:
                raise AttestationError(
                    "no saved node identity: --join-token and --server-bundle needed"
                )
            node = await attest(self.config.server, server_roots_pem, join_token, self.resolve)
            node.save(self.config.data_dir)
        self._use(node)
        await self.sync()

    def _use(self, node: NodeCredentials, target: str | None = None) -> None:
        self.node = node
        if target is None and self.target is None:
            target = self._resolve() or self.config.server.split(",")[0]  # gRPC resolves it
        self.target = target or self.target
        assert self.target is not None
        old, self._channel = (
            self._channel,
            open_channel(self.target, node.bundle.x509_pem(), node),
        )
        if old is not None:  # let calls in flight on the old channel finish
            closing = asyncio.get_running_loop().create_task(old.close(grace=1))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def _resolve(self) -> str | None:
        """The channel target of the server names as they resolve now; None (logged) when
        none resolves."""
        try:
            return channel_target(self.config.server, self.resolve)
        except OSError as exc:
            log.warning("cannot resolve the server: %s", exc)
            return None

    async def _follow_resolution(self) -> None:
        """After a failed call: resolve the server names again, and move the channel to the
        addresses they have now if those changed (a replica replaced, a DNS name moved)."""
        target = await asyncio.to_thread(self._resolve)
        if target is not None and target != self.target and self.node is not None:
            log.info("%s resolves to %s now: reconnecting there", self.config.server, target)
            self._use(self.node, target)

    @property
    def _stub(self) -> Any:
        assert self._channel is not None, "start() first"
        return node_stub(self._channel)

    async def run(self) -> None:
        """Sync forever: every sync interval, and after a failure sooner (a capped backoff with
        jitter), so SVIDs due during an outage are renewed as soon as the server is back."""
        while True:
            await asyncio.sleep(self._next_delay())
            await self.sync_once()

    def _next_delay(self) -> float:
        delay = self.config.sync_interval
        if self.failures:
            delay = min(delay, RETRY_FIRST_SECONDS * 2 ** (self.failures - 1))
        return delay * random.uniform(0.8, 1.2)

    async def sync_once(self) -> bool:
        """Renew the node SVID if due and sync; a failure is recorded (and logged), not raised."""
        try:
            await self.renew_node_if_due()
            await self.sync()
        except (grpc.aio.AioRpcError, IdentityError, ValueError) as exc:
            self.failures += 1
            self.last_sync_error = _describe(exc)
            log.warning(
                "sync with %s failed (%d in a row): %s",
                self.config.server,
                self.failures,
                self.last_sync_error,
            )
            await self._follow_resolution()
            return False
        self.failures, self.last_sync_error = 0, None
        return True

    def health(self) -> IdentityHealth:
        """Whether the SVIDs held will outlive the current failure to reach the server."""
        held = [i.svid.leaf for i in self.cache.identities]
        if self.node is not None:
            held.append(self.node.chain[0])
        return identity_health(held, self.clock.now(), self.failures > 0)

    async def renew_node_if_due(self) -> None:
        assert self.node is not None and self._channel is not None
        if self.clock.now() >= self.node.renew_at():
            node = await renew(self._channel, self.node)
            node.save(self.config.data_dir)
            self._use(node)

    async def sync(self) -> None:
        request = pb.SyncRequest(packet_filter_format=self.config.packet_filter_format)
        response = await self._stub.Sync(request, timeout=15)
        assert self.node is not None
        bundle = TrustBundle.parse_spiffe_json(response.bundle, self.node.trust_domain)
        if bundle != self.node.bundle:
            self.node = NodeCredentials(self.node.key, self.node.chain, bundle)
            self.node.save(self.config.data_dir)
        identities = await self._identities(response.workloads, bundle)
        old_bundle = self.cache.bundle()
        if tuple(identities) != self.cache.identities or bundle != old_bundle:
            self.cache.update(identities, bundle)
        if self.config.packet_filter_format and self.on_packet_filter is not None:
            await self.on_packet_filter(response.packet_filter)

    async def _identities(
        self, entries: Sequence[pb.WorkloadEntry], bundle: TrustBundle
    ) -> list[CachedIdentity]:
        current = {i.spiffe_id: i for i in self.cache.identities}
        wanted = [(SpiffeId.parse(e.spiffe_id), tuple(e.selectors)) for e in entries]
        stale = [sid for sid, _ in wanted if self._needs_svid(current.get(sid), bundle)]
        fresh = await self._sign(stale) if stale else {}
        result = []
        for spiffe_id, selectors in wanted:
            svid = fresh.get(spiffe_id) or (
                current[spiffe_id].svid if spiffe_id in current else None
            )
            if svid is not None:
                result.append(CachedIdentity(spiffe_id, selectors, svid))
        return result

    def _needs_svid(self, cached: CachedIdentity | None, bundle: TrustBundle) -> bool:
        if cached is None:
            return True
        issuer_known = any(c in bundle.x509_authorities for c in cached.svid.chain[1:])
        jitter = self._jitter.setdefault(cached.spiffe_id, random.uniform(-0.1, 0.1))
        return not issuer_known or renewal_due(cached.svid, self.clock.now(), jitter)

    async def _sign(self, spiffe_ids: Sequence[SpiffeId]) -> dict[SpiffeId, X509Svid]:
        """New keys and X509-SVIDs for `spiffe_ids` (one span `meshwarden.agent.sign_svids`)."""
        with _tracer.start_as_current_span("meshwarden.agent.sign_svids") as span:
            span.set_attribute("meshwarden.spiffe_ids", [str(s) for s in spiffe_ids])
            signed = await self._sign_now(spiffe_ids)
            refused = [str(s) for s in spiffe_ids if s not in signed]
            if refused:
                span.set_attribute("meshwarden.refused", refused)
                span.set_status(Status(StatusCode.ERROR, f"{len(refused)} SVID(s) refused"))
            return signed

    async def _sign_now(self, spiffe_ids: Sequence[SpiffeId]) -> dict[SpiffeId, X509Svid]:
        keys = {sid: generate_key() for sid in spiffe_ids}
        requests = [pb.X509SVIDRequest(spiffe_id=str(s), csr=make_csr(k)) for s, k in keys.items()]
        response = await self._stub.SignX509SVIDs(pb.SignX509SVIDsRequest(requests=requests))
        signed = {}
        for result in response.results:
            spiffe_id = SpiffeId.parse(result.spiffe_id)
            if result.error:
                log.warning("server refused an SVID for %s: %s", spiffe_id, result.error)
                continue
            chain = tuple(x509.load_der_x509_certificate(c) for c in result.svid_chain)
            signed[spiffe_id] = X509Svid(spiffe_id, chain, keys[spiffe_id])
            self._jitter.pop(spiffe_id, None)
        return signed

    async def mint_jwt(self, spiffe_id: SpiffeId, audience: Sequence[str]) -> str:
        """A JWT-SVID from the server, reused until half its lifetime has passed."""
        key = (str(spiffe_id), tuple(sorted(audience)))
        cached = self._jwt.tokens.get(key)
        if cached is not None and self.clock.now() < cached[1]:
            return cached[0]
        request = pb.SignJWTSVIDRequest(spiffe_id=str(spiffe_id), audience=list(audience))
        try:
            response = await self._stub.SignJWTSVID(request, timeout=15)
        except grpc.aio.AioRpcError as exc:
            raise IssuanceError(
                f"server refused a JWT-SVID for {spiffe_id}: {exc.details()}"
            ) from exc
        refresh = self.clock.now() + dt.timedelta(minutes=2)
        self._jwt.tokens[key] = (response.token, refresh)
        return str(response.token)

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=0.5)
