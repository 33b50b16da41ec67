"""Unix attestation: SO_PEERCRED of a real socket pair, selectors, and the PID-reuse guard."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from meshwarden.identities import AttestationError, PeerProcess, peer_process, unix_selectors
from meshwarden.identities._attestation import process_start_ticks


def test_peer_credentials_name_this_process_and_its_selectors() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        peer = peer_process(left)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    selectors = unix_selectors(peer)
    assert f"unix:uid:{os.getuid()}" in selectors and f"unix:gid:{os.getgid()}" in selectors
    assert f"unix:path:{os.path.realpath(sys.executable)}" in selectors
    assert "unix:user:root" in selectors if os.getuid() == 0 else True


def test_a_pid_that_now_names_another_process_fails_attestation() -> None:
    me = PeerProcess(os.getpid(), 0, 0, process_start_ticks(os.getpid()) - 1)
    with pytest.raises(AttestationError, match="PID reuse"):
        unix_selectors(me)


def test_a_process_that_exited_fails_attestation() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_ticks(child.pid)
    child.wait()
    with pytest.raises(AttestationError, match="is gone"):
        unix_selectors(PeerProcess(child.pid, 0, 0, start))


def test_peer_credentials_need_a_unix_socket() -> None:
    with socket.socket() as tcp, pytest.raises(AttestationError, match="Unix domain socket"):
        peer_process(tcp)


def test_user_and_group_names_are_looked_up_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of connections from one uid reads /etc/passwd once; a renamed user is seen
    once the second has passed."""
    from meshwarden.identities import _attestation

    lookups: list[int] = []
    name = ["alice"]

    def getpwuid(uid: int) -> object:
        lookups.append(uid)
        return type("Entry", (), {"pw_name": name[0]})()

    monkeypatch.setattr(_attestation.pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(_attestation, "_known_names", {})
    peer = PeerProcess(1, 4242, 4242, 0)
    now = [100.0]
    assert _attestation._names(peer, lambda: now[0])[0] == "user:alice"
    name[0] = "bob"
    now[0] += 0.5
    assert _attestation._names(peer, lambda: now[0])[0] == "user:alice"
    assert lookups == [4242]
    now[0] += 0.6
    assert _attestation._names(peer, lambda: now[0])[0] == "user:bob"
    assert lookups == [4242, 4242]
