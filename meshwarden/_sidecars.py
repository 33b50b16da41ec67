"""Envoy sidecars started by `meshwarden up` (and `meshwarden sidecar`): one process per
workload with its bootstrap, and for `up` a private SDS socket bound to that process. Each
Envoy's admin interface is a unix socket (mode 0600, in a 0700 directory), never a TCP port:
no other local user can read it or POST /quitquitquit."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from meshwarden._sidecar_process import ProcessRecord, spawn_detached, start_time, terminate
from meshwarden.identities import (
    AttestationError,
    CachedIdentity,
    IdentityCache,
    LocalEndpoint,
    LocalServer,
    caller_process,
)
from meshwarden.xds import bootstrap, envoy_binary, sds_handler


def file_stem(ref: str) -> str:
    return ref.replace("/", "_")


def envoy_command(config: Path, log_level: str = "warning") -> list[str]:
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--use-dynamic-base-id",
        "--concurrency",
        "1",
        "--log-level",
        log_level,
        "--drain-time-s",
        "1",
    ]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_request(
    admin_socket: Path, path: str, method: str = "GET", timeout: float = 5
) -> tuple[int, str]:
    """(status, body) of one request to an Envoy admin interface on a unix socket; raises
    OSError when the socket refuses (absent, or not ours)."""
    conn = _UnixHTTPConnection(admin_socket, timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except http.client.HTTPException as exc:
        raise OSError(f"{admin_socket}: {exc}") from exc
    finally:
        conn.close()


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
    detach: bool = False  # True: the Envoy outlives this process (see _sidecar_process)
    process: subprocess.Popen[bytes] | None = None  # when not detached
    record: ProcessRecord | None = None
    sds: LocalEndpoint | None = None

    @property
    def sds_socket(self) -> Path:
        return self.folder / f"{file_stem(self.ref)}.sds.sock"

    @property
    def admin_socket(self) -> Path:
        return self.folder / f"{file_stem(self.ref)}.admin.sock"

    @property
    def record_file(self) -> Path:
        return self.folder / f"{file_stem(self.ref)}.pid.json"

    @property
    def pid(self) -> int | None:
        return self.record.pid if self.record else None

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        """(status, body) from this sidecar's Envoy admin socket."""
        return admin_request(self.admin_socket, path, method)

    def running(self) -> bool:
        return self.record is not None and self.record.alive()

    def exit_status(self) -> str:
        """How the Envoy ended, as far as we can know (a detached one is not our child)."""
        code = self.process.poll() if self.process is not None else None
        if code is not None:
            return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        lines = [ln for ln in self.log_tail().splitlines() if ln.strip()]
        return f"last log line: {lines[-1][-300:]}" if lines else "no log line"

    def log_tail(self, size: int = 2000) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(max(0, log.seek(0, 2) - size))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def warm(self) -> bool:
        """Envoy has no listener or cluster still warming (waiting for secrets, endpoints or
        routes): everything it ACKed is serving."""
        try:
            status, body = self.admin("/stats?filter=warming&format=json")
            stats = json.loads(body)["stats"] if status == 200 else []
        except (OSError, ValueError, KeyError):
            return False
        wanted = ("listener_manager.total_listeners_warming", "cluster_manager.warming_clusters")
        values = {s.get("name"): s.get("value") for s in stats}
        return all(values.get(name) == 0 for name in wanted)

    @property
    def log_file(self) -> Path:
        return self.folder / f"{file_stem(self.ref)}.envoy.log"

    def _attest(self, context: grpc.aio.ServicerContext) -> frozenset[str]:
        caller = caller_process(context)
        if self.pid is None or caller.pid != self.pid:
            raise AttestationError(
                f"pid {caller.pid} is not the sidecar of {self.ref}; this socket serves only it"
            )
        return frozenset()

    async def start_sds(self, cache: IdentityCache) -> None:
        view = WorkloadIdentities(cache, self.spiffe_id)

        def add(server: LocalServer) -> None:
            server.add_generic_rpc_handlers((sds_handler(view, self._attest),))  # type: ignore[arg-type]

        self.sds = LocalEndpoint(self.sds_socket, add, mode=0o600)
        await self.sds.start()

    async def start(
        self, server: str, delta: bool = False, ext_authz_http_port: int | None = None
    ) -> None:
        host, _, port = server.rpartition(":")
        trust_domain = self.spiffe_id.removeprefix("spiffe://").partition("/")[0]
        config = bootstrap(
            self.ref,
            host,
            int(port),
            str(self.sds_socket),
            delta=delta,
            trust_domain=trust_domain,
            admin_socket=str(self.admin_socket),
            ext_authz_http_port=ext_authz_http_port,
        )
        path = self.folder / f"{file_stem(self.ref)}.bootstrap.json"
        path.write_text(json.dumps(config, indent=1))
        self.admin_socket.unlink(missing_ok=True)
        command = envoy_command(path)
        if self.detach:
            self.record = await asyncio.to_thread(spawn_detached, command, self.log_file)
        else:
            with self.log_file.open("ab") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=log)
            self.record = ProcessRecord(
                self.process.pid, start_time(self.process.pid) or 0, str(path)
            )
        self.record.save(self.record_file)

    async def stop(self) -> None:
        if self.record is not None:
            await asyncio.to_thread(terminate, self.record)
            if self.process is not None:
                self.process.poll()
            self.record_file.unlink(missing_ok=True)
        if self.sds is not None:
            await self.sds.stop()


async def stop_all(sidecars: Sequence[Sidecar]) -> None:
    await asyncio.gather(*(s.stop() for s in sidecars), return_exceptions=True)
