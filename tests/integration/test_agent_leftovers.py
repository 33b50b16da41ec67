"""An agent killed with SIGKILL leaves the private directories of its relays beside its sockets
(`.meshwarden-XXXXXXXX`, each holding a dead grpc socket); the next agent removes those and
nothing else: not a symlink, not another user's directory, not one holding anything else, not a
live endpoint's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from spiffe import WorkloadApiClient

from .test_cli_end_to_end import MESHWARDEN, _start
from .test_node_attestation import running_plane

NOBODY = 65534


def _agent(server: str, bundle: Path, data: Path, run: Path, *token: str) -> list[str]:
    return [
        "agent",
        *("--server", server, "--server-bundle", str(bundle), "--data-dir", str(data)),
        *("--socket", str(run / "w.sock"), "--sds-socket", str(run / "sds.sock"), *token),
    ]


def _private_dirs(run: Path) -> set[str]:
    return {p.name for p in run.iterdir() if p.name.startswith(".meshwarden-")}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """(address, server bundle file, a join token) of a running control plane."""
    with running_plane(tmp_path) as plane:
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(plane.roots)
        yield plane.address, bundle, plane.token("node-a")


def _decoys(run: Path, elsewhere: Path) -> tuple[list[Path], socket.socket]:
    """Directories named like ours that must survive: a symlink to a dead one, another user's,
    one holding another file too, and a live endpoint's (its listening socket is returned)."""
    dead = elsewhere / "dead"
    dead.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead / "s"))  # closed: a dead socket
    (run / ".meshwarden-symlink1").symlink_to(dead)
    foreign = run / ".meshwarden-nobody01"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    os.utime(foreign, (0, 0))  # old and empty: only the owner keeps it
    extra = run / ".meshwarden-extra001"
    extra.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(extra / "s"))
    (extra / "notes").write_text("not ours to delete\n")
    live = run / ".meshwarden-live0001"
    live.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(live / "s"))
    listener.listen(8)
    return [run / ".meshwarden-symlink1", foreign, extra, live], listener


def test_an_agent_removes_what_a_killed_agent_left_and_nothing_else(
    tmp_path: Path, server: tuple[str, Path, str]
) -> None:
    address, bundle, token = server
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    data = tmp_path / "agent"
    log = tmp_path / "agent.log"
    killed, _ = _start(_agent(address, bundle, data, run, "--join-token", token), log)
    left = _private_dirs(run)
    assert len(left) == 2  # the Workload API's and SDS's relays
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    assert _private_dirs(run) == left  # what SIGKILL leaves: each with a dead socket inside
    decoys, live = _decoys(run, elsewhere)
    with live:
        agent, _ = _start(_agent(address, bundle, data, run), tmp_path / "agent2.log")
        try:
            now = _private_dirs(run)
            assert not now & left  # the killed agent's are gone
            assert now - {d.name for d in decoys} != set()  # the new agent's own two
            assert len(now - {d.name for d in decoys}) == 2
            assert all(os.path.lexists(d) for d in decoys)
            assert (elsewhere / "dead" / "s").exists()  # the symlink was not followed
            assert (run / ".meshwarden-extra001" / "notes").exists()
            with WorkloadApiClient(f"unix://{run / 'w.sock'}") as client:
                assert client.fetch_x509_svids(timeout=10)  # the new agent serves
        finally:
            agent.terminate()
            assert agent.wait(10) == 0
    assert _private_dirs(run) == {d.name for d in decoys}  # a clean stop removes its own


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
        assert first.wait(10) == 0
    notes = run / "w.sock"
    notes.write_text("a user's file\n")
    third = _agent(address, bundle, tmp_path / "a", run)
    refused = subprocess.run(MESHWARDEN + third, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert f"{notes} exists and is not a socket" in refused.stderr
    assert notes.read_text() == "a user's file\n"
