"""bench_ext_authz's production worker path: the HTTP front served by the control plane's own
`AuthzWorkers` (one worker process accepting from the control plane's listening socket, the
policy files' bytes compiled in the worker, mTLS with the server sidecar's SVID as the caller,
the production resolver), read by the bench as an engine: checks answered (the durations the
worker hands back), the worker's CPU, and the decision handler's time per check.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from _engine_alone import EngineStats
from _harness import Identities

from meshwarden._authz_workers import AuthzWorkers, WorkerFiles
from meshwarden._policies import Policies


class WorkerEngine:
    """One `AuthzWorkers` worker on a free 127.0.0.1 port, run from a thread of the bench."""

    def __init__(self, docs: list[dict[str, Any]], ids: Identities, folder: Path) -> None:
        (folder / "worker-policies").mkdir()
        (folder / "worker-policies" / "mesh.yaml").write_text(yaml.safe_dump_all(docs))
        policies = Policies(folder / "worker-policies", settle=0)
        policies.reload_when_settled()
        assert policies.mesh is not None, policies.status.errors
        self.handler_us: list[float] = []
        tls = ids.server
        self.workers = AuthzWorkers(
            1,
            ("127.0.0.1", 0),
            WorkerFiles(Path(tls.certificate_chain), Path(tls.private_key)),
            str(folder / "worker-policies"),
            self._record,
        )
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        roots = Path(tls.trust_bundle).read_bytes()
        started = asyncio.run_coroutine_threadsafe(
            self.workers.start(roots, policies.contents, policies.mesh.version), self.loop
        )
        self.port: int = started.result(120)

    def _record(self, seconds: float, labels: Mapping[str, str]) -> None:
        self.handler_us.append(seconds * 1e6)

    def stats(self) -> EngineStats:
        """What the worker reported so far (it flushes every 0.5 s) and its CPU."""
        time.sleep(0.6)
        [worker] = self.workers.status()
        fields = Path(f"/proc/{worker['pid']}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return EngineStats(len(self.handler_us), list(self.handler_us), cpu)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.workers.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
