"""Workload attestation for local sockets: who is on the other end of a Unix socket.

The kernel's SO_PEERCRED gives the caller's PID, UID and GID as of connect(). UID and GID are
trustworthy as they are; the PID is only a name that the kernel may recycle, so anything read
through /proc/PID (the executable path) is followed by a check that the PID still names the
process that connected (PID reuse guard; the argument is in `unix_selectors`). The agent's
endpoints pin that process by a pidfd the kernel gives for the connection (`attested_peer`,
SO_PEERPIDFD, Linux 6.5 and later): it refers to the process itself, not to its number.
Elsewhere, or on an older kernel, the process is pinned by its start time (`peer_process`):
one that started after the connection was accepted cannot be the caller.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshwarden.identities._errors import AttestationError

_PEERCRED = struct.Struct("3i")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
UNIX_PREFIX = "unix:"
SO_PEERPIDFD = 77  # Linux 6.5 (`socket.SO_PEERPIDFD` from Python 3.13 on)
_NO_PIDFD = (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP)  # a kernel without it


class PidFd:
    """A pidfd of a connection's peer process, owned by the connection: `close` it when the
    connection ends. A closed one proves nothing, so checking it fails."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def ensure_not_reaped(self, pid: int) -> None:
        """Raise unless the process is still there (running, or exited and not yet reaped),
        which means its PID has not been given to another process."""
        if self.fd < 0:
            raise AttestationError(f"the connection of PID {pid} is closed")
        try:
            signal.pidfd_send_signal(self.fd, 0)
        except ProcessLookupError:
            raise AttestationError(f"process {pid} is gone (its PID may name another)") from None
        except PermissionError:
            pass  # it is there; this agent may not signal it

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


@dataclass(frozen=True)
class PeerProcess:
    """The process behind one accepted connection, pinned by a pidfd (`pidfd`, owned by the
    connection; `start_ticks` is then 0) or by its start time."""

    pid: int
    uid: int
    gid: int
    start_ticks: int
    pidfd: PidFd | None = field(default=None, compare=False, repr=False)


def process_start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat: start time in clock ticks after boot (read with two system
    calls: this runs for every connection and every call on the agent's sockets)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError as exc:
        raise AttestationError(f"process {pid} is gone: {exc.strerror}") from exc
    try:
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        raise AttestationError(f"process {pid}: unreadable /proc/{pid}/stat") from None


def _uptime_ticks() -> float:
    """Clock ticks since boot, on the clock /proc/PID/stat counts start times with (the boot
    clock, shifted alike inside a time namespace)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) * _CLOCK_TICKS


def _credentials(sock: socket.socket) -> tuple[int, int, int]:
    if sock.family != socket.AF_UNIX:
        raise AttestationError("peer credentials need a Unix domain socket")
    pid, uid, gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    if pid <= 0:
        raise AttestationError("the kernel reported no peer process for this connection")
    return pid, uid, gid


def peer_process(sock: socket.socket) -> PeerProcess:
    """Read SO_PEERCRED of an accepted Unix socket and pin the PID by its start time."""
    accepted_at = _uptime_ticks()
    pid, uid, gid = _credentials(sock)
    start = process_start_ticks(pid)
    if start > accepted_at + _CLOCK_TICKS:
        raise AttestationError(f"PID {pid} was reused after the connection was made")
    return PeerProcess(pid=pid, uid=uid, gid=gid, start_ticks=start)


_pidfds = True  # until the kernel says it has no SO_PEERPIDFD


def attested_peer(sock: socket.socket) -> PeerProcess:
    """SO_PEERCRED of an accepted Unix socket, the process pinned by the pidfd the kernel keeps
    for the connection (SO_PEERPIDFD: the process that called connect(), whatever became of
    its PID since), or by its start time on a kernel without one. A process already reaped is
    refused. The caller owns `pidfd` and closes it with the connection."""
    global _pidfds
    if not _pidfds:
        return peer_process(sock)
    pid, uid, gid = _credentials(sock)
    try:
        pidfd = PidFd(sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD))
    except OSError as exc:
        if exc.errno not in _NO_PIDFD:
            raise AttestationError(f"no pidfd for PID {pid}: {exc.strerror}") from None
        _pidfds = False
        return peer_process(sock)
    try:
        pidfd.ensure_not_reaped(pid)
    except AttestationError:
        pidfd.close()
        raise
    return PeerProcess(pid=pid, uid=uid, gid=gid, start_ticks=0, pidfd=pidfd)


def _ensure_same_process(peer: PeerProcess) -> None:
    if peer.pidfd is not None:
        peer.pidfd.ensure_not_reaped(peer.pid)
    elif process_start_ticks(peer.pid) != peer.start_ticks:
        raise AttestationError(f"PID {peer.pid} now names another process (PID reuse)")


NAMES_SECONDS = 1.0  # how long a uid's and gid's names are reused (see `_names`)
_known_names: dict[tuple[int, int], tuple[float, tuple[str, ...]]] = {}


def _names(peer: PeerProcess, clock: Callable[[], float] = time.monotonic) -> tuple[str, ...]:
    """The user and group names of the peer's uid and gid. NSS reads /etc/passwd and /etc/group
    on every lookup (≈ 35 µs, a sixth of a first fetch), so the names of a uid and gid are
    reused for `NAMES_SECONDS`: a burst of a workload's connections looks them up once, and a
    renamed user or group is seen a second later at most."""
    key, now = (peer.uid, peer.gid), clock()
    known = _known_names.get(key)
    if known is not None and now - known[0] < NAMES_SECONDS:
        return known[1]
    names = []
    with contextlib.suppress(KeyError):
        names.append(f"user:{pwd.getpwuid(peer.uid).pw_name}")
    with contextlib.suppress(KeyError):
        names.append(f"group:{grp.getgrgid(peer.gid).gr_name}")
    if len(_known_names) >= 1024:
        _known_names.clear()
    _known_names[key] = (now, tuple(names))
    return tuple(names)


def unix_selectors(peer: PeerProcess) -> frozenset[str]:
    """`unix:uid:N`, `unix:gid:N`, `unix:user:NAME`, `unix:group:NAME`, `unix:path:/exe`.

    The executable is read through the PID, so the read is followed by one check that the PID
    still names the process pinned at accept. That one check after the read is enough: a PID
    is given to a new process only after its process has been reaped, so
    - with a pidfd (`attested_peer`): a process not reaped after the read held its PID from
      connect() until then, the read included (a zombie has no executable to read);
    - with the start time (`peer_process`): the new process starts later, so a PID that names
      a process of the pinned start time after the read named that same process from the
      accept until then. The limit is the clock's: a PID reused within the same clock tick as
      the pinned start is not seen.
    A check before the read would only say so for part of that interval (it was dropped: one
    more system call, or open and read of /proc/PID/stat, per call)."""
    selectors = {f"uid:{peer.uid}", f"gid:{peer.gid}", *_names(peer)}
    try:
        selectors.add(f"path:{os.readlink(f'/proc/{peer.pid}/exe')}")
    except OSError as exc:
        _ensure_same_process(peer)  # a process gone or replaced says so
        raise AttestationError(f"cannot read the executable of PID {peer.pid}: {exc}") from exc
    _ensure_same_process(peer)
    return frozenset(UNIX_PREFIX + s for s in selectors)
