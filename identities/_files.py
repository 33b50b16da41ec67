"""State files and the directory that holds them.

Files are written atomically: a temporary file beside the target is created exclusively
(O_EXCL|O_NOFOLLOW, mode 0600 from the first byte), filled, fsync'ed and renamed over the target.
A symlink planted at the temporary name is removed (never followed) and the create retried once;
the rename replaces a symlink at the target itself, never its destination. The directory must be
private to the running user (`check_private_dir`), so nobody else can plant anything there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meshwarden.identities._errors import StateError

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _create_exclusive(temporary: Path, mode: int) -> int:
    try:
        return os.open(temporary, _CREATE, mode)
    except FileExistsError:
        # a leftover of a crash, or something planted: remove the name itself and retry once
        temporary.unlink()
        return os.open(temporary, _CREATE, mode)


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` atomically (temporary file, fsync, rename) with `mode` (0600 by default)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = _create_exclusive(temporary, mode)
    try:
        os.fchmod(descriptor, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    os.replace(temporary, path)


def check_private_dir(path: Path) -> None:
    """Create `path` (mode 0700) if missing; raise StateError unless it is a directory owned by
    the running user that no group or other user may enter."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = path.stat()
    except OSError as exc:
        raise StateError(f"{path}: cannot use as data dir: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"{path}: the data dir is not a directory")
    if info.st_uid != os.geteuid():
        raise StateError(
            f"{path}: the data dir is owned by uid {info.st_uid}, not by uid {os.geteuid()} "
            f"running meshwarden; use a directory of your own or `chown {os.geteuid()} {path}`"
        )
    if info.st_mode & 0o077:
        raise StateError(
            f"{path}: the data dir has mode {stat.S_IMODE(info.st_mode):04o}; other users may "
            f"enter it and plant files; run `chmod 700 {path}`"
        )
