"""Claiming a path for an agent's Unix socket: a lock file held for the endpoint's life, then the
socket path itself.

The lock (`PATH.lock` beside the socket, mode 0600, opened without following symlinks and locked
with `flock`) tells two agents started at the same instant apart: both would find the path free,
and the second to bind would replace the first's socket. Only the holder of the lock looks at
the socket path: a dead socket (a killed endpoint's) is replaced, a live one is another
endpoint's and is refused, anything that is not a socket is refused. The lock file stays when
the endpoint stops (removing it would let a third endpoint lock a new file while a second holds
the old one); the kernel releases the lock when the process exits, however it exits."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

LOCK_SUFFIX = ".lock"


def lock_path(socket_path: Path) -> Path:
    return socket_path.with_name(socket_path.name + LOCK_SUFFIX)


class SocketLock:
    """The lock on a socket path, held from `acquire` until `release`."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.path = lock_path(socket_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the path or raise OSError: EADDRINUSE naming the socket when another endpoint
        holds it, EEXIST when the lock path is not a regular file of ours."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.EEXIST, f"{self.path} is a symlink; remove it") from None
            raise
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
                raise OSError(
                    errno.EEXIST, f"{self.path} is not a regular file of this user; remove it"
                )
            if stat.S_IMODE(found.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise in_use(self.socket_path) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def claim_socket_path(path: Path) -> None:
    """Make `path` free to bind: remove a socket nothing listens on (a killed endpoint's);
    raise OSError(EADDRINUSE) when one answers (another agent serves there) and
    OSError(EEXIST) when the path is not a socket (never delete a user's file)."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise OSError(
            errno.EEXIST, f"{path} exists and is not a socket; remove it or choose another path"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a live server with a full backlog answers EAGAIN
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise in_use(path) from None
        else:
            raise in_use(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def in_use(path: Path) -> OSError:
    return OSError(
        errno.EADDRINUSE,
        f"{path}: another process is serving on this socket (a second agent?); stop it or "
        "choose another path",
    )
