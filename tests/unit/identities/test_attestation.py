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
