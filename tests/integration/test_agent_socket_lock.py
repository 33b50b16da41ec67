"""Two endpoints started on one socket path at the same instant: both used to find the path
free, and the second to bind replaced the first's socket (asyncio removes a socket file before
binding), taking its workloads over. The lock file beside the socket lets exactly one start;
the other is refused naming the path, as a second agent on a served socket is."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from meshwarden.identities import IdentityCache, LocalEndpoint, SystemClock
from meshwarden.identities._workload_api import workload_api_services
from spiffe import WorkloadApiClient

from .conftest import WorkloadApiFixture
from .test_cli_end_to_end import MESHWARDEN, _start
from .test_node_attestation import running_plane


async def _mint(*_: object) -> str:
    raise AssertionError("no JWT is minted here")


def _endpoint(path: Path) -> LocalEndpoint:
    return LocalEndpoint(path, workload_api_services(IdentityCache(), _mint, SystemClock()))


def test_two_endpoints_started_at_once_on_one_path_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"

    async def race() -> list[BaseException | None]:
        endpoints = [_endpoint(path), _endpoint(path)]
        outcomes = await asyncio.gather(*(e.start() for e in endpoints), return_exceptions=True)
        try:
            served = [e for e, o in zip(endpoints, outcomes, strict=True) if o is None]
            assert len(served) == 1
            inode = os.stat(path).st_ino
            assert served[0].connections_accepted == 0
            _, writer = await asyncio.open_unix_connection(str(path))
            for _ in range(500):  # until the winner has accepted it (bounded)
                if served[0].connections_accepted:
                    break
                await asyncio.sleep(0.01)
            assert served[0].connections_accepted == 1  # the socket is the winner's
            writer.close()
            assert os.stat(path).st_ino == inode
        finally:
            for endpoint in endpoints:
                await endpoint.stop(0)
        return list(outcomes)

    outcomes = asyncio.run(race())
    refused = [o for o in outcomes if o is not None]
    assert len(refused) == 1 and isinstance(refused[0], OSError)
    assert refused[0].errno == errno.EADDRINUSE
    assert f"{path}: another process is serving on this socket" in str(refused[0])
    assert not path.exists()  # the winner's stop removed its socket; the loser removed nothing


def test_the_lock_file_is_private_and_a_symlink_there_is_refused_not_followed(
    tmp_path: Path, workload_api: WorkloadApiFixture
) -> None:
    lock = workload_api.socket.with_name(workload_api.socket.name + ".lock")
    assert stat.S_IMODE(os.lstat(lock).st_mode) == 0o600
    with WorkloadApiClient(workload_api.address) as client:
        assert client.fetch_x509_svids(timeout=10)
    target = tmp_path / "elsewhere"
    target.write_text("not a lock\n")
    os.chmod(target, 0o644)
    path = tmp_path / "agent.sock"
    (tmp_path / "agent.sock.lock").symlink_to(target)
    with pytest.raises(OSError) as refused:
        asyncio.run(_endpoint(path).start())
    assert refused.value.errno == errno.EEXIST
    assert "agent.sock.lock is a symlink" in str(refused.value)
    assert target.read_text() == "not a lock\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not path.exists()


def _agent(server: str, bundle: Path, data: Path, run: Path, *token: str) -> list[str]:
    return [
        "agent",
        *("--server", server, "--server-bundle", str(bundle), "--data-dir", str(data)),
        *("--socket", str(run / "w.sock"), "--sds-socket", str(run / "sds.sock"), *token),
    ]


def test_a_second_agent_on_a_served_socket_is_refused_and_a_file_is_never_deleted(
    tmp_path: Path,
) -> None:
    """Two agents given one `--socket`: the second used to unlink the first's socket and take
    its workloads over; now it exits 2 naming the path, and the first keeps serving. A file
    that is not a socket at that path is refused too, not deleted."""
    with running_plane(tmp_path) as plane:
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(plane.roots)
        _second_agent_refused(tmp_path, plane.address, bundle, plane.token("a"), plane.token("b"))


def _second_agent_refused(
    tmp_path: Path, address: str, bundle: Path, token: str, other: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    first, _ = _start(
        _agent(address, bundle, tmp_path / "a", run, "--join-token", token), tmp_path / "a.log"
    )
    try:
        served = (run / "w.sock").stat().st_ino
        second = _agent(address, bundle, tmp_path / "b", run, "--join-token", other)
        second[second.index(str(run / "sds.sock"))] = str(run / "sds-b.sock")
        refused = subprocess.run(MESHWARDEN + second, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2, refused.stderr
        assert f"{run / 'w.sock'}: another process is serving on this socket" in refused.stderr
        assert (run / "w.sock").stat().st_ino == served
        with WorkloadApiClient(f"unix://{run / 'w.sock'}") as client:
            assert client.fetch_x509_svids(timeout=10)  # still the first agent's workloads
    finally:
        first.terminate()
        assert first.wait(60) == 0
    notes = run / "w.sock"
    notes.write_text("a user's file\n")
    third = _agent(address, bundle, tmp_path / "a", run)
    refused = subprocess.run(MESHWARDEN + third, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert f"{notes} exists and is not a socket" in refused.stderr
    assert notes.read_text() == "a user's file\n"
