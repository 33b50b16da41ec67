"""`meshwarden up DIR`: the whole mesh on this host — control plane, node agent and one Envoy
sidecar per Workload in DIR — kept in step with DIR until SIGINT/SIGTERM.

Supervision: an Envoy that exits is started again after a delay that doubles per exit in a row
(1 s … 30 s) and the other sidecars keep serving; `up` says which one fails and why, and
/healthz is `degraded` meanwhile. With `detach` the Envoys outlive `up` (a `kill -9` of `up`
leaves the mesh enforcing its last configuration) and the next `up` on the same data directory
replaces them."""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from meshwarden import _bypass, _outbound_filter
from meshwarden._agent import AgentOptions, NodeAgent
from meshwarden._console import ConsoleOptions
from meshwarden._health import Reply
from meshwarden._server import BUNDLE_FILE, ControlPlane, ServerOptions
from meshwarden._sidecar_process import ProcessRecord, terminate
from meshwarden._sidecars import Sidecar, stop_all
from meshwarden._up_progress import IdentityNotes, Progress, Restarts, current_nack, monotonic
from meshwarden.identities import Clock, SystemClock
from meshwarden.xds import TracingTarget

NODE_NAME = "local"
MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
IDENTITY_GRACE_S = 3.0  # a sidecar without an SVID this long after it started is reported
BYPASS_SCAN_S = 10.0


def _check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"{path}: too long for a unix socket ({MAX_SOCKET_PATH} bytes at "
            "most); use a shorter --data-dir"
        )


class LocalMesh:
    def __init__(
        self,
        policies: Path,
        data_dir: Path | None = None,
        *,
        delta: bool = False,
        clock: Clock | None = None,
        report: TextIO = sys.stderr,
        tracing: TracingTarget | None = None,
        health: str = "127.0.0.1:0",
        flow_log_sample: float = 100.0,
        flow_log_file: Path | None = None,
        detach: bool = False,
        ui: ConsoleOptions | None = None,
    ) -> None:
        self.policies = policies
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="meshwarden-up-"))
        self.delta = delta
        self.detach = detach
        self.clock = clock or SystemClock()
        self.progress = Progress(report)
        self.plane = ControlPlane(
            ServerOptions(
                policies=policies,
                data_dir=self.data_dir / "server",
                listen="127.0.0.1:0",
                ext_authz_http_listen="127.0.0.1:0",  # for Mesh extAuthz.transport: http
                health=health,
                tracing=tracing,
                flow_log_sample=flow_log_sample,
                flow_log_file=flow_log_file,
                ui=ui,
            ),
            self.clock,
        )
        self.agent: NodeAgent | None = None
        self.sidecars: dict[str, Sidecar] = {}
        self.server_address = ""
        self.problems: dict[str, str] = {}  # sidecar → why it is not serving (for /healthz)
        self._restarts: dict[str, Restarts] = {}
        self._identity_notes = IdentityNotes()
        self._guards: tuple[list[_outbound_filter.Guard], str | None] | None = None
        self._blocked: dict[str, str] = {}  # workload → why its sidecar may not run
        self._lock: int | None = None
        self._wanted: set[str] = set()  # the workloads that should have a sidecar
        self._last_scan = 0.0

    @property
    def folder(self) -> Path:
        return self.data_dir / "sidecars"

    @property
    def health_url(self) -> str:
        health = self.plane.health
        return f"http://{health.host}:{health.port}/healthz" if health else ""

    async def start(self, ready_timeout: float = 60) -> str:
        _check_socket_path(self.data_dir / "agent" / "workload.sock")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._take_lock()
        self.folder.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)  # the admin and SDS sockets: no other user may enter
        await self._replace_leftovers()
        logging.getLogger("meshwarden.identities").addHandler(self._identity_notes)
        self.server_address = await self.plane.start()
        self._degrade_health_on_problems()
        token = self.plane.tokens.create(NODE_NAME, dt.timedelta(minutes=5))
        options = AgentOptions(
            server=self.server_address,
            data_dir=self.data_dir / "agent",
            socket=self.data_dir / "agent" / "workload.sock",
            server_bundle=self.data_dir / "server" / BUNDLE_FILE,
            join_token=token,
            sync_interval=1.0,
        )
        self.agent = NodeAgent(options, self.clock)
        await self.agent.start()
        if self.plane.console is not None:
            self.plane.console.sources.svid_expiry = self._svid_expiry
        await self.reconcile(strict=True)
        await self.wait_until_applied(ready_timeout)
        self._warn_bypass()
        console = f", console {self.plane.console.url}" if self.plane.console else ""
        return (
            f"{len(self.sidecars)} sidecar(s) ACKed their config; control plane "
            f"{self.server_address}, ADS {self.plane.xds_address}, health {self.health_url}"
            f"{console}, data {self.data_dir}"
        )

    def _svid_expiry(self, spiffe_id: str) -> str | None:
        """When the node agent's X509-SVID for `spiffe_id` expires (ISO 8601), if it holds one."""
        for held in self.agent.cache.identities if self.agent else ():
            if str(held.spiffe_id) == spiffe_id:
                return held.svid.expires_at.isoformat(timespec="seconds")
        return None

    def _take_lock(self) -> None:
        """One `up` per data directory (the second would fight the first over its sidecars)."""
        path = self.data_dir / "up.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RuntimeError(
                f"another `meshwarden up` (pid {holder}) uses {self.data_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd

    async def _replace_leftovers(self) -> None:
        """Stop the Envoys an earlier `up` on this data directory left running (it was killed)
        so the new ones can bind their ports."""
        for path in sorted(self.folder.glob("*.pid.json")):
            record = ProcessRecord.load(path)
            ours = record is not None and Path(record.config).parent == self.folder
            if record is not None and ours and record.alive():
                self.progress.say(
                    f"replacing the Envoy (pid {record.pid}) an earlier `up` "
                    f"left running for {record.config}"
                )
                await asyncio.to_thread(terminate, record)
            path.unlink(missing_ok=True)

    def _degrade_health_on_problems(self) -> None:
        """/healthz is `degraded` while a sidecar is failing or may not start (with why)."""
        health = self.plane.health
        if health is None:
            return
        base = health.routes["/healthz"]

        def healthz(params: dict[str, str]) -> Reply:
            reply = base(params)
            problems = {**self._blocked, **self.problems}
            if not problems:
                return reply
            body: dict[str, Any] = json.loads(reply.body)
            problems = {**body.get("sidecarProblems", {}), **problems}
            body["status"] = "degraded"
            body["sidecarProblems"] = problems
            return Reply.json(body, reply.status)

        health.routes["/healthz"] = healthz

    async def reconcile(self, strict: bool = False) -> None:
        """Start a sidecar for every workload in the last good policies; stop removed ones.
        A sidecar that cannot start is reported (and tried again next time) — unless `strict`
        (the first start), where it is an error."""
        assert self.agent is not None
        registry = self.plane.policies.registry
        if registry is None:
            return
        self._guard_outbound(list(registry.workloads.values()))
        wanted = {
            ref: w.identity
            for ref, w in registry.workloads.items()
            if w.addresses and ref not in self._blocked
        }
        self._wanted = set(wanted)
        for ref in sorted(set(self.sidecars) - set(wanted)):
            await self.sidecars.pop(ref).stop()
            self.problems.pop(ref, None)
            self.progress.say(f"stopped the sidecar of {ref}")
        for ref, spiffe_id in sorted(wanted.items()):
            current = self.sidecars.get(ref)
            if current is not None and current.spiffe_id == spiffe_id:
                continue
            if current is not None:
                await current.stop()
            self.sidecars.pop(ref, None)
            sidecar = Sidecar(ref, spiffe_id, self.folder, detach=self.detach)
            try:
                await self._start_sidecar(sidecar)
            except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as exc:
                if strict:
                    raise
                self.problems[ref] = f"its sidecar cannot start: {exc}"
                self.progress.once(f"start {ref}", f"error: {ref}: {self.problems[ref]}")

    async def _start_sidecar(self, sidecar: Sidecar) -> None:
        assert self.agent is not None
        for path in (sidecar.sds_socket, sidecar.admin_socket):
            _check_socket_path(path)
        await sidecar.start_sds(self.agent.cache)
        try:
            await sidecar.start(self.plane.xds_address, self.delta, self.plane.ext_authz_http_port)
        except BaseException:
            await sidecar.stop()
            raise
        self._restarts[sidecar.ref] = Restarts(started=monotonic())
        self.sidecars[sidecar.ref] = sidecar

    def _guard_outbound(self, workloads: list[Any]) -> None:
        """Install the outbound-listener rules when they changed. Fail closed: a workload whose
        rules cannot be installed gets no sidecar (its listener would serve every local user)."""
        found, unguarded = _outbound_filter.guards(workloads)
        if self._guards is not None and self._guards == (found, None):
            return  # installed already (a failed install is tried again)
        chain = _outbound_filter.chain_name(self.data_dir)
        error = _outbound_filter.apply(chain, found) if found else None
        self._guards = (found, error)
        self._blocked = {}
        for guard in found if error else []:
            self._blocked[guard.ref] = f"its outbound listeners cannot be guarded ({error})"
        for ref, why in sorted(self._blocked.items()):
            self.progress.once(
                f"blocked {ref}", f"error: {ref}: {why}; its sidecar is not started (fail closed)"
            )
        for ref in unguarded:
            self.progress.once(
                f"unguarded {ref}",
                f"warning: {ref} has upstreams but no "
                "unix:uid selector: any local process can use its outbound "
                "listeners (and its identity)",
            )

    def _identity_reason(self, sidecar: Sidecar) -> str:
        """Why the node agent holds no SVID for a sidecar's workload, as far as we know."""
        registry = self.plane.policies.registry
        workload = registry.workloads.get(sidecar.ref) if registry else None
        pinned = [
            s.removeprefix("node:")
            for s in (workload.selectors if workload else ())
            if s.startswith("node:")
        ]
        if pinned and NODE_NAME not in pinned:
            return f"its selectors pin it to node {', '.join(pinned)} (this node is {NODE_NAME!r})"
        return self._identity_notes.reason(sidecar.spiffe_id)

    def _has_identity(self, sidecar: Sidecar) -> bool:
        assert self.agent is not None
        return any(str(i.spiffe_id) == sidecar.spiffe_id for i in self.agent.cache.identities)

    def _why_pending(self, sidecar: Sidecar) -> str:
        """Why a sidecar has not applied its configuration, as far as we can tell."""
        cache = self.plane.xds.cache
        if not sidecar.running():
            return f"its Envoy exited ({sidecar.exit_status()})"
        nack = current_nack(cache, sidecar.ref)
        if nack is not None:
            return f"Envoy rejected its configuration: {nack}"
        if not self._has_identity(sidecar):
            return f"no identity: {self._identity_reason(sidecar)}"
        if cache.status(sidecar.ref).streams == 0:
            return "not connected to the control plane yet"
        return "waiting for its ACK" if not cache.applied(sidecar.ref) else "warming"

    async def wait_until_applied(self, timeout: float) -> None:
        """Until every sidecar ACKed its current configuration and nothing in it is warming;
        says `sidecars ACKed n/N`, each NACK and each sidecar without an identity meanwhile."""
        deadline = monotonic() + timeout
        cache = self.plane.xds.cache
        while True:
            refs = sorted(self.sidecars)
            pending = [ref for ref in refs if not cache.applied(ref)]
            self.progress.acked(len(refs) - len(pending), len(refs))
            self.progress.nacks(cache, refs)
            if not pending:
                sidecars = list(self.sidecars.values())
                warm = await asyncio.gather(*(asyncio.to_thread(s.warm) for s in sidecars))
                pending = [s.ref for s, ok in zip(sidecars, warm, strict=True) if not ok]
            if not pending:
                return
            self._report_identities(pending)
            for sidecar in self.sidecars.values():
                if not sidecar.running():
                    why = f"({sidecar.exit_status()}):\n{sidecar.log_tail()}"
                    raise RuntimeError(f"the Envoy of {sidecar.ref} exited {why}")
            if monotonic() > deadline:
                why = "; ".join(
                    f"{ref}: {self._why_pending(self.sidecars[ref])}" for ref in pending
                )
                raise RuntimeError(
                    f"sidecars not ready after {timeout:.0f} s (--ready-timeout): {why}"
                )
            await asyncio.sleep(0.1)

    def _report_identities(self, refs: list[str]) -> None:
        """Name the sidecars (of `refs`) that still have no SVID a while after they started."""
        now = monotonic()
        for ref in refs:
            sidecar, restarts = self.sidecars[ref], self._restarts.get(ref)
            key = f"identity {ref}"
            if restarts is not None and now - restarts.started < IDENTITY_GRACE_S:
                continue
            if self._has_identity(sidecar):
                self.progress.forget(key)
                continue
            reason = self._identity_reason(sidecar)
            self.progress.once(key, f"sidecar {ref} has no identity: {reason}")

    def _refresh_problems(self) -> None:
        """What /healthz shows per sidecar: an exit (kept while it waits to restart), no
        identity, or a rejected configuration; nothing once it serves again."""
        now = monotonic()
        for ref in set(self.problems) - self._wanted:
            del self.problems[ref]
        for ref, sidecar in self.sidecars.items():
            restarts = self._restarts.get(ref)
            if not sidecar.running() or (restarts is not None and restarts.due is not None):
                continue  # _supervise says why
            young = restarts is not None and now - restarts.started < IDENTITY_GRACE_S
            nack = current_nack(self.plane.xds.cache, ref)
            if not young and not self._has_identity(sidecar):
                self.problems[ref] = f"no identity: {self._identity_reason(sidecar)}"
            elif nack is not None:
                self.problems[ref] = f"Envoy rejected its configuration: {nack}"
            elif self.plane.xds.cache.applied(ref):
                self.problems.pop(ref, None)  # serving again

    async def run(self) -> None:
        assert self.agent is not None
        tasks = [
            asyncio.create_task(self.plane.run()),
            asyncio.create_task(self.agent.run()),
            asyncio.create_task(self._keep_sidecars()),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _keep_sidecars(self) -> None:
        """Follow the policy directory's workloads, restart Envoys that exited (with backoff),
        and report NACKs, missing identities and apps reachable around their sidecar."""
        while True:
            await asyncio.sleep(1.0)
            await self.reconcile()
            await self._supervise()
            refs = sorted(self.sidecars)
            self.progress.nacks(self.plane.xds.cache, refs)
            self._report_identities(refs)
            self._refresh_problems()
            if monotonic() - self._last_scan > BYPASS_SCAN_S:
                self._warn_bypass()

    async def _supervise(self) -> None:
        now = monotonic()
        for ref, sidecar in sorted(self.sidecars.items()):
            restarts = self._restarts.setdefault(ref, Restarts(started=now))
            if sidecar.running():
                continue
            if restarts.due is None:
                delay = restarts.exited(now)
                why = f"the Envoy of {ref} (pid {sidecar.pid}) exited ({sidecar.exit_status()})"
                self.problems[ref] = why
                self.progress.say(
                    f"{why}; restarting it in {delay:.0f} s ({restarts.failures} "
                    f"exit(s) in a row; log {sidecar.log_file})"
                )
            elif restarts.ready(now):
                await sidecar.start(
                    self.plane.xds_address, self.delta, self.plane.ext_authz_http_port
                )
                restarts.restarted(now)

    def _warn_bypass(self) -> None:
        self._last_scan = monotonic()
        registry = self.plane.policies.registry
        if registry is None:
            return
        for found in _bypass.bypasses(registry.workloads.values(), _bypass.listening()):
            self.progress.once(f"bypass {found}", str(found))

    async def stop(self) -> None:
        logging.getLogger("meshwarden.identities").removeHandler(self._identity_notes)
        await stop_all(list(self.sidecars.values()))
        if self._guards is not None and self._guards[0] and not self._guards[1]:
            _outbound_filter.remove(_outbound_filter.chain_name(self.data_dir))
        if self.agent is not None:
            await self.agent.stop()
        await self.plane.stop()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
