"""Reading a secret from a file (a key-encryption key, an etcd password): never through a
symlink, only a regular file, only when no one but its owner can read it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meshwarden.identities import StateError

__all__ = ["read_secret_file"]

LIMIT = 4096  # a secret file is small; more is not read


def read_secret_file(path: Path, what: str) -> bytes:
    """The bytes of `path` (at most 4 KiB); StateError naming `what` and the problem when the
    file is missing, a symlink, not a regular file, or readable by others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{path}: the {what} must be a regular file")
        if info.st_mode & 0o077:
            raise StateError(
                f"{path}: mode {stat.S_IMODE(info.st_mode):04o}: the {what} must be "
                "readable by its owner only (chmod 600)"
            )
        return handle.read(LIMIT)
