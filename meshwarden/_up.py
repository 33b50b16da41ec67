"""`meshwarden up DIR`: the whole mesh on this host — control plane, node agent and one Envoy
sidecar per Workload in DIR — kept in step with DIR until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from meshwarden._agent import AgentOptions, NodeAgent
from meshwarden._server import BUNDLE_FILE, ControlPlane, ServerOptions
from meshwarden._sidecars import Sidecar, stop_all
from meshwarden.identities import Clock, SystemClock
from meshwarden.xds import TracingTarget

NODE_NAME = "local"
CRASH_LOOP = 5  # an Envoy exiting this often within CRASH_WINDOW_S stops `up`
CRASH_WINDOW_S = 60.0


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
    ) -> None:
        self.policies = policies
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="meshwarden-up-"))
        self.delta = delta
        self.clock = clock or SystemClock()
        self.report = report
        self.plane = ControlPlane(
            ServerOptions(policies=policies, data_dir=self.data_dir / "server",
                          listen="127.0.0.1:0", health=health, tracing=tracing,
                          flow_log_sample=flow_log_sample, flow_log_file=flow_log_file),
            self.clock)  # fmt: skip
        self.agent: NodeAgent | None = None
        self.sidecars: dict[str, Sidecar] = {}
        self.server_address = ""

    @property
    def health_url(self) -> str:
        health = self.plane.health
        return f"http://{health.host}:{health.port}/healthz" if health else ""

    async def start(self, ready_timeout: float = 60) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.server_address = await self.plane.start()
        token = self.plane.tokens.create(NODE_NAME, dt.timedelta(minutes=5))
        options = AgentOptions(
            server=self.server_address, data_dir=self.data_dir / "agent",
            socket=self.data_dir / "agent" / "workload.sock",
            server_bundle=self.data_dir / "server" / BUNDLE_FILE, join_token=token,
            sync_interval=1.0,
        )  # fmt: skip
        self.agent = NodeAgent(options, self.clock)
        await self.agent.start()
        await self.reconcile()
        await self.wait_until_applied(ready_timeout)
        return (
            f"{len(self.sidecars)} sidecar(s) ACKed their config; control plane "
            f"{self.server_address}, health {self.health_url}, data {self.data_dir}"
        )

    async def reconcile(self) -> None:
        """Start a sidecar for every workload in the last good policies; stop removed ones."""
        assert self.agent is not None
        registry = self.plane.policies.registry
        if registry is None:
            return
        folder = self.data_dir / "sidecars"
        folder.mkdir(exist_ok=True)
        wanted = {ref: w.identity for ref, w in registry.workloads.items() if w.addresses}
        for ref in sorted(set(self.sidecars) - set(wanted)):
            await self.sidecars.pop(ref).stop()
            print(f"stopped the sidecar of {ref}", file=self.report)
        for ref, spiffe_id in sorted(wanted.items()):
            current = self.sidecars.get(ref)
            if current is not None and current.spiffe_id == spiffe_id:
                continue
            if current is not None:
                await current.stop()
            sidecar = Sidecar(ref, spiffe_id, folder)
            await sidecar.start_sds(self.agent.cache)
            sidecar.start(self.server_address, self.delta)
            self.sidecars[ref] = sidecar

    async def wait_until_applied(self, timeout: float) -> None:
        """Until every sidecar ACKed its current configuration and nothing in it is warming."""
        deadline = time.monotonic() + timeout
        cache = self.plane.xds.cache
        while True:
            pending = [ref for ref in self.sidecars if not cache.applied(ref)]
            if not pending:
                sidecars = list(self.sidecars.values())
                warm = await asyncio.gather(*(asyncio.to_thread(s.warm) for s in sidecars))
                pending = [s.ref for s, ok in zip(sidecars, warm, strict=True) if not ok]
            if not pending:
                return
            for sidecar in self.sidecars.values():
                code = sidecar.process.poll() if sidecar.process else None
                if code is not None:
                    tail = sidecar.log_file.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the Envoy of {sidecar.ref} exited ({code}):\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sidecars not ready after {timeout:.0f} s: {pending}")
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        assert self.agent is not None
        tasks = [asyncio.create_task(self.plane.run()), asyncio.create_task(self.agent.run()),
                 asyncio.create_task(self._keep_sidecars())]  # fmt: skip
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _keep_sidecars(self) -> None:
        """Follow the policy directory's workloads, and restart an Envoy that exited — unless it
        keeps crashing (`CRASH_LOOP` exits within `CRASH_WINDOW_S`): then stop with an error."""
        exits: dict[str, list[float]] = {}
        while True:
            await asyncio.sleep(1.0)
            await self.reconcile()
            for sidecar in self.sidecars.values():
                code = sidecar.process.poll() if sidecar.process else None
                if code is None:
                    continue
                now = time.monotonic()
                recent = [t for t in exits.get(sidecar.ref, []) if now - t < CRASH_WINDOW_S]
                exits[sidecar.ref] = [*recent, now]
                if len(exits[sidecar.ref]) >= CRASH_LOOP:
                    raise RuntimeError(f"the Envoy of {sidecar.ref} exited {CRASH_LOOP} times "
                                       f"within {CRASH_WINDOW_S:.0f} s (last: {code}); "
                                       f"see {sidecar.log_file}")  # fmt: skip
                print(f"the Envoy of {sidecar.ref} exited ({code}); restarting it "
                      f"(see {sidecar.log_file})", file=self.report, flush=True)  # fmt: skip
                sidecar.start(self.server_address, self.delta)

    async def stop(self) -> None:
        await stop_all(list(self.sidecars.values()))
        if self.agent is not None:
            await self.agent.stop()
        await self.plane.stop()
