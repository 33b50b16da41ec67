"""Unix attestation: SO_PEERCRED of a real socket pair, selectors, and the PID-reuse guard."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from meshwarden.identities import AttestationError, PeerProcess, peer_process, unix_selectors
from meshwarden.identities._attestation import PidFd, attested_peer, process_start_ticks


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


def test_the_agent_pins_its_peer_by_a_pidfd_and_its_selectors_need_it_open() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        peer = attested_peer(left)
    assert peer.pidfd is not None  # Linux 6.5 and later: SO_PEERPIDFD
    assert f"unix:path:{os.path.realpath(sys.executable)}" in unix_selectors(peer)
    peer.pidfd.close()  # the connection ended: nothing is proven any more
    with pytest.raises(AttestationError, match="is closed"):
        unix_selectors(peer)


def _reaped_child() -> tuple[int, PidFd]:
    """The PID and a pidfd of a child process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pidfd = PidFd(os.pidfd_open(child.pid))
    child.wait()
    return child.pid, pidfd


def test_a_pid_whose_pinned_process_is_gone_fails_attestation_even_if_it_names_another() -> None:
    """The pidfd's process was reaped; its PID now names a live process (here this one, as
    after a reuse): the executable read through the PID is not taken for the caller's."""
    _, pidfd = _reaped_child()
    reused = PeerProcess(os.getpid(), 0, 0, 0, pidfd=pidfd)
    try:
        with pytest.raises(AttestationError, match="is gone"):
            unix_selectors(reused)
    finally:
        pidfd.close()


def test_a_peer_reaped_before_it_is_attested_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        connect = f"import socket; socket.socket(socket.AF_UNIX).connect({path!r})"
        subprocess.run([sys.executable, "-c", connect], check=True)  # connected, exited, reaped
        accepted, _ = server.accept()
        with accepted, pytest.raises(AttestationError, match="is gone"):
            attested_peer(accepted)


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
