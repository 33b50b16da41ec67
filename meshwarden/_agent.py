"""`meshwarden agent`: attests this node, keeps its workloads' SVIDs fresh and serves them on
the Workload API socket (and SDS for the local Envoy when asked)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from meshwarden._enforce import TableEnforcer
from meshwarden._enforce import observe as observe_enforcement
from meshwarden._health import HealthEndpoint
from meshwarden._policies import settle_collections
from meshwarden.identities import (
    Agent,
    AgentConfig,
    Clock,
    IdentityCache,
    IdentityHealth,
    LocalEndpoint,
    LocalServer,
    caller_selectors,
    check_private_dir,
    raise_descriptor_limit,
    read_server_bundle,
    workload_api_services,
)
from meshwarden.xds import sds_handler


@dataclass(frozen=True)
class AgentOptions:
    server: str
    data_dir: Path
    socket: Path
    server_bundle: Path | None = None
    join_token: str | None = None
    sds_socket: Path | None = None
    sync_interval: float = 5.0
    health: str | None = None  # HOST:PORT of GET /healthz; None = off
    enforce: str | None = None  # "nftables": keep the node's table in sync with the policies


class NodeAgent:
    def __init__(self, options: AgentOptions, clock: Clock) -> None:
        self.options = options
        self.cache = IdentityCache()
        config = AgentConfig(
            options.server,
            options.data_dir,
            options.sync_interval,
            packet_filter_format=options.enforce or "",
        )
        self.agent = Agent(config, self.cache, clock)
        self.enforcer = TableEnforcer() if options.enforce else None
        if self.enforcer is not None:
            observe_enforcement(self.enforcer)
            self.agent.on_packet_filter = self._enforce
        services = workload_api_services(self.cache, self.agent.mint_jwt, clock)
        self.workload_api = LocalEndpoint(options.socket, services)
        self.sds = LocalEndpoint(options.sds_socket, self._add_sds) if options.sds_socket else None
        self.clock = clock
        self.health: HealthEndpoint | None = None
        meter = metrics.get_meter("meshwarden.agent")
        meter.create_observable_gauge(
            "meshwarden.svid.expiry",
            callbacks=[self._svid_expiry],
            unit="s",
            description="seconds until each X509-SVID this agent holds expires",
        )
        meter.create_observable_gauge(
            "meshwarden.agent.identity.at_risk",
            callbacks=[self._at_risk],
            description="1 when the control plane is unreachable and an SVID held is in the "
            "last quarter of its lifetime (or expired), else 0",
        )

    def _at_risk(self, _options: CallbackOptions) -> Iterable[Observation]:
        health = self.agent.health()
        return [Observation(int(health is not IdentityHealth.OK), {"identity": health.value})]

    def _report(self) -> dict[str, Any]:
        """GET /healthz: `identity` ok | expiring | expired, and with `--enforce` the packet
        filter's last apply (status degraded unless both are fine)."""
        identity = self.agent.health()
        node = self.agent.node
        enforcer = self.enforcer
        healthy = identity is IdentityHealth.OK and (enforcer is None or enforcer.healthy)
        return {
            "status": "ok" if healthy else "degraded",
            "packetFilter": enforcer.report() if enforcer is not None else None,
            "identity": identity.value,
            "server": self.options.server,
            "syncFailuresInARow": self.agent.failures,
            "lastSyncError": self.agent.last_sync_error,
            "nodeSvidExpires": node.expires_at.isoformat() if node else None,
            "svids": [
                {
                    "spiffeId": str(held.spiffe_id),
                    "expires": held.svid.leaf.not_valid_after_utc.isoformat(),
                }
                for held in self.cache.identities
            ],
            "healthEndpoint": self.health.counters() if self.health is not None else None,
        }

    def _svid_expiry(self, _options: CallbackOptions) -> Iterable[Observation]:
        now = self.clock.now()
        return [
            Observation(
                (held.svid.leaf.not_valid_after_utc - now).total_seconds(),
                {"spiffe_id": str(held.spiffe_id)},
            )
            for held in self.cache.identities
        ]

    async def _enforce(self, table: str) -> None:
        assert self.enforcer is not None
        await asyncio.to_thread(self.enforcer.sync, table)

    def _add_sds(self, server: LocalServer) -> None:
        handler = sds_handler(self.cache, caller_selectors)
        server.add_generic_rpc_handlers((handler,))

    async def start(self) -> None:
        """Attest (or reuse the saved node identity), fetch SVIDs, then open the socket."""
        options = self.options
        check_private_dir(options.data_dir)
        roots = read_server_bundle(options.server_bundle) if options.server_bundle else None
        await self.agent.start(roots, options.join_token)
        raise_descriptor_limit()
        await self.workload_api.start()
        if self.sds is not None:
            await self.sds.start()
        if options.health:
            host, _, port = options.health.rpartition(":")
            self.health = HealthEndpoint(host, int(port), self._report)
            await self.health.start()
        # What start-up loaded (≈ 100,000 objects: grpc, cryptography, the engine) is exempt
        # from collections from now on: a full collection walking it all while workloads connect
        # held their first fetch for hundreds of milliseconds (bench/bench_identities.py).
        settle_collections()

    async def run(self) -> None:
        await self.agent.run()

    async def stop(self) -> None:
        if self.health is not None:
            await self.health.stop()
        if self.sds is not None:
            await self.sds.stop()
        await self.workload_api.stop()
        await self.agent.stop()
