"""Envoy sidecars started by `meshwarden up` (and `meshwarden sidecar`): one process per
workload with its bootstrap, and for `up` a private SDS socket bound to that process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from meshwarden.identities import AttestationError, CachedIdentity, IdentityCache, LocalEndpoint
from meshwarden.xds import bootstrap, envoy_binary, sds_handler


def file_stem(ref: str) -> str:
    return ref.replace("/", "_")


def envoy_command(
    config: Path, log_level: str = "warning", admin_address: Path | None = None
) -> list[str]:
    command = [envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--concurrency", "1",
               "--log-level", log_level, "--drain-time-s", "1"]  # fmt: skip
    if admin_address is not None:
        command += ["--admin-address-path", str(admin_address)]
    return command


class WorkloadIdentities:
    """The agent's identity cache seen by one sidecar: only its workload's SVID and the bundle.
    Duck-types the parts of `IdentityCache` that SDS uses."""

    def __init__(self, cache: IdentityCache, spiffe_id: str) -> None:
        self._cache = cache
        self._spiffe_id = spiffe_id

    @property
    def version(self) -> int:
        return self._cache.version

    def bundle(self) -> Any:
        return self._cache.bundle()

    def identities_for(self, caller: frozenset[str]) -> tuple[CachedIdentity, ...]:
        return tuple(i for i in self._cache.identities if str(i.spiffe_id) == self._spiffe_id)

    async def wait_for_change(self, seen_version: int) -> int:
        return await self._cache.wait_for_change(seen_version)


@dataclass
class Sidecar:
    """One workload's Envoy and (under `up`) its private SDS endpoint."""

    ref: str
    spiffe_id: str
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    sds: LocalEndpoint | None = None

    @property
    def sds_socket(self) -> Path:
        return self.folder / f"{file_stem(self.ref)}.sds.sock"

    @property
    def admin_address_file(self) -> Path:
        return self.folder / f"{file_stem(self.ref)}.admin"

    def admin_url(self) -> str:
        """http://HOST:PORT of this sidecar's Envoy admin (once Envoy has written it)."""
        return "http://" + self.admin_address_file.read_text().strip()

    def warm(self) -> bool:
        """Envoy has no listener or cluster still warming (waiting for secrets, endpoints or
        routes): everything it ACKed is serving."""
        try:
            url = self.admin_url() + "/stats?filter=warming&format=json"
            with urllib.request.urlopen(url, timeout=2) as response:
                stats = json.loads(response.read())["stats"]
        except (OSError, ValueError, KeyError):
            return False
        wanted = ("listener_manager.total_listeners_warming", "cluster_manager.warming_clusters")
        values = {s.get("name"): s.get("value") for s in stats}
        return all(values.get(name) == 0 for name in wanted)

    @property
    def log_file(self) -> Path:
        return self.folder / f"{file_stem(self.ref)}.envoy.log"

    def _attest(self, peers: Any, context: grpc.aio.ServicerContext) -> frozenset[str]:
        caller = peers.of(context)
        if self.process is None or caller.pid != self.process.pid:
            raise AttestationError(
                f"pid {caller.pid} is not the sidecar of {self.ref}; this socket serves only it"
            )
        return frozenset()

    async def start_sds(self, cache: IdentityCache) -> None:
        view = WorkloadIdentities(cache, self.spiffe_id)

        def add(server: grpc.aio.Server, peers: Any) -> None:
            attest = lambda context: self._attest(peers, context)  # noqa: E731
            server.add_generic_rpc_handlers((sds_handler(view, attest),))  # type: ignore[arg-type]

        self.sds = LocalEndpoint(self.sds_socket, add, mode=0o600)
        await self.sds.start()

    def start(self, server: str, delta: bool = False) -> None:
        host, _, port = server.rpartition(":")
        trust_domain = self.spiffe_id.removeprefix("spiffe://").partition("/")[0]
        config = bootstrap(self.ref, host, int(port), str(self.sds_socket), delta=delta,
                           trust_domain=trust_domain)  # fmt: skip
        path = self.folder / f"{file_stem(self.ref)}.bootstrap.json"
        path.write_text(json.dumps(config, indent=1))
        log = self.log_file.open("ab")
        command = envoy_command(path, admin_address=self.admin_address_file)
        self.process = subprocess.Popen(command, stdout=log, stderr=log)

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.sds is not None:
            await self.sds.stop()


async def stop_all(sidecars: Sequence[Sidecar]) -> None:
    await asyncio.gather(*(s.stop() for s in sidecars), return_exceptions=True)
