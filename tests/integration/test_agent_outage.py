"""A control-plane outage seen from the agent: its /healthz turns `expiring` when the server is
unreachable and SVIDs are in their last quarter, and the first sync after the server is back
renews them (the agent retries within seconds, not gRPC's default of up to two minutes)."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from meshwarden.identities import ManualClock

from meshwarden._agent import AgentOptions, NodeAgent
from meshwarden._server import BUNDLE_FILE, ControlPlane, ServerOptions

from .harness import LoopThread
from .test_node_attestation import POLICIES


def _healthz(agent: NodeAgent) -> dict[str, Any]:
    assert agent.health is not None
    url = f"http://{agent.health.host}:{agent.health.port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.loads(response.read()))


def _plane(tmp_path: Path, clock: ManualClock, listen: str) -> ControlPlane:
    options = ServerOptions(tmp_path / "policies", tmp_path / "server", listen=listen, health=None)
    return ControlPlane(options, clock)


def test_the_agent_warns_before_its_svids_expire_and_renews_when_the_server_is_back(
    tmp_path: Path,
) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "mesh.yaml").write_text(POLICIES)
    # the mesh started 50 minutes ago (1 h SVIDs): certificates stay valid in real time
    clock = ManualClock(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=50))
    loop = LoopThread()
    first = _plane(tmp_path, clock, "127.0.0.1:0")
    address = loop.run(first.start())
    options = AgentOptions(
        server=address,
        data_dir=tmp_path / "agent",
        socket=tmp_path / "agent.sock",
        server_bundle=tmp_path / "server" / BUNDLE_FILE,
        health="127.0.0.1:0",
        join_token=first.tokens.create("node-a"),
    )
    agent = NodeAgent(options, clock)
    try:
        loop.run(agent.start())
        assert _healthz(agent)["identity"] == "ok"
        before = {i.spiffe_id: i.svid.leaf for i in agent.cache.identities}
        loop.run(first.stop())
        assert loop.run(agent.agent.sync_once()) is False
        assert _healthz(agent)["identity"] == "ok"  # a failed sync alone is no alarm
        clock.advance(dt.timedelta(minutes=50))  # 10 of 60 minutes left
        report = _healthz(agent)
        assert (report["status"], report["identity"]) == ("degraded", "expiring")
        assert report["lastSyncError"].startswith("UNAVAILABLE")
        second = _plane(tmp_path, clock, address)
        loop.run(second.start())
        deadline = time.monotonic() + 20
        while not loop.run(agent.agent.sync_once()):
            assert time.monotonic() < deadline, "the agent did not reach the server again"
            time.sleep(0.2)
        assert _healthz(agent)["identity"] == "ok"
        after = {i.spiffe_id: i.svid.leaf for i in agent.cache.identities}
        assert after.keys() == before.keys()
        assert all(after[k] != before[k] for k in before)  # renewed on the first sync back
        loop.run(second.stop())
    finally:
        loop.run(agent.stop())
        loop.close()
