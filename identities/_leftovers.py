"""What an endpoint killed with SIGKILL leaves beside its public socket: the private directory of
its relay (`.meshwarden-XXXXXXXX`, mode 0700, holding the grpc server's socket `s`). A starting
endpoint removes the ones that are certainly dead, and nothing else:

- the name is exactly ours (mkdtemp's eight characters after the prefix);
- a directory itself, not a symlink, of this process's uid and mode 0700 (opened with
  O_NOFOLLOW and checked again on the descriptor, so a swap in between is noticed);
- holding nothing, or only a socket `s` of ours that refuses connections (its server is gone).

A live endpoint's directory (another process's, or this process's other socket) accepts the
connection and is left alone; so is an empty one younger than a minute (an endpoint between
creating its directory and binding its socket)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

from meshwarden.identities._front import PRIVATE_DIR_PREFIX

log = logging.getLogger(__name__)
_NAME = re.compile(re.escape(PRIVATE_DIR_PREFIX) + r"[a-z0-9_]{8}")
_SOCKET = "s"
_YOUNG_SECONDS = 60.0


def remove_stale_private_dirs(parent: Path) -> list[Path]:
    """Remove the dead relay directories in `parent` (see the module's doc); the ones removed."""
    try:
        names = [e.name for e in os.scandir(parent) if _NAME.fullmatch(e.name)]
    except OSError:
        return []
    removed = []
    for name in names:
        with contextlib.suppress(OSError):
            if _remove_if_stale(parent, name):
                removed.append(parent / name)
                log.info("removed %s, left by an endpoint that was killed", parent / name)
    return removed


def _remove_if_stale(parent: Path, name: str) -> bool:
    path = parent / name
    before = os.lstat(path)
    if not _ours(before, stat.S_ISDIR):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            return False  # replaced since the lstat
        contents = os.listdir(fd)
        if contents == []:
            if time.time() - opened.st_mtime < _YOUNG_SECONDS:
                return False
        elif contents != [_SOCKET] or not _dead_socket(fd):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_SOCKET, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)
    return True


def _ours(found: os.stat_result, kind: Callable[[int], bool]) -> bool:
    """Of `kind` (not a symlink: lstat), this process's uid, and a directory's mode 0700."""
    private = stat.S_IMODE(found.st_mode) == 0o700 or not stat.S_ISDIR(found.st_mode)
    return kind(found.st_mode) and found.st_uid == os.geteuid() and private


def _dead_socket(directory_fd: int) -> bool:
    """The socket `s` in the directory is ours and nothing listens on it."""
    if not _ours(os.stat(_SOCKET, dir_fd=directory_fd, follow_symlinks=False), stat.S_ISSOCK):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:  # through the descriptor: the path checked above, whatever renames meanwhile
            probe.connect(f"/proc/self/fd/{directory_fd}/{_SOCKET}")
        except OSError as exc:
            return exc.errno == errno.ECONNREFUSED
    return False  # it answered: a live endpoint's
