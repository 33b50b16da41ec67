"""Finding and reading policy files so that nothing on disk can raise out of the reader.

A directory that changes during the scan (a file or directory removed, a permission changed),
a special file (FIFO, device), a file over the size limit or one that is not UTF-8 becomes an
`error:` diagnostic naming the file; the scan and the read never follow a symlink into a
directory (so a symlink loop is never walked) and never block on a FIFO.

A symlink is followed only to a file of the link's own owner, or when root owns the link (the
rule of nginx's `disable_symlinks if_not_owner`): whoever may write the policy directory must
not be able to make the reader — `check` in CI, a control plane running as root — read another
user's file and quote its lines in diagnostics, `/healthz` or the console.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from meshwarden.engine._diagnostics import Diagnostic, Location, error
from meshwarden.engine._limits import LIMITS, InputLimits, over_limit

YAML_SUFFIXES = (".yaml", ".yml")
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class UsageError(Exception):
    """A path that cannot be read as policy input (missing, unreadable, no YAML in it)."""


def scan_files(
    paths: Sequence[str | os.PathLike[str]], suffixes: tuple[str, ...] = YAML_SUFFIXES
) -> tuple[list[str], list[Diagnostic]]:
    """YAML files named or found (recursively, sorted, hidden entries skipped) under `paths`,
    and a diagnostic for every directory that could not be listed. Raises UsageError only for
    a named path that does not exist or a named directory with no YAML file in it. `suffixes`
    are the file names searched for in directories (`import` adds .json)."""
    files: list[str] = []
    problems: list[Diagnostic] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = _walk(path, problems, suffixes)
            if not found and not problems:
                names = " or ".join(suffixes).replace(" or ", ", ", len(suffixes) - 2)
                raise UsageError(f"{raw}: no {names} files in this directory")
            files.extend(found)
        elif path.exists() or path.is_symlink():
            files.append(str(path))
        else:
            raise UsageError(f"{raw}: no such file or directory")
    return files, problems


def _walk(top: Path, problems: list[Diagnostic], suffixes: tuple[str, ...]) -> list[str]:
    """Policy files under `top`, without recursion and without following directory symlinks."""
    found: list[str] = []
    pending = [str(top)]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            problems.append(error(Location(directory), f"cannot read directory: {_reason(exc)}"))
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            if _is_real_dir(entry):
                pending.append(entry.path)
            elif entry.name.endswith(suffixes) and _is_file(entry):
                found.append(entry.path)
    return sorted(found)


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    """Anything but a directory named like a policy file: a regular file, a symlink (read_text
    reports a dangling one or a loop), or a FIFO, socket or device, which read_text reports as
    not a regular file (left out, a DENY policy replaced by one would stop applying)."""
    return not _is_real_dir(entry)


def read_text(file: str, limits: InputLimits = LIMITS) -> tuple[str | None, Diagnostic | None]:
    """The text of one policy file, or the reason it cannot be used as one."""
    try:
        fd, info = open_policy_file(file)
    except (OSError, Refused) as exc:
        return None, error(Location(file), f"cannot read file: {_why(exc)}")
    try:
        if info.st_size > limits.file_bytes:
            return None, _too_big(file, info.st_size, limits)
        data = _read_at_most(fd, limits.file_bytes + 1)
    except OSError as exc:
        return None, error(Location(file), f"cannot read file: {_reason(exc)}")
    finally:
        os.close(fd)
    if len(data) > limits.file_bytes:
        return None, _too_big(file, len(data), limits)
    return _decode(file, data)


class FileChanged(OSError):
    """The path no longer names the file that was opened: read it again."""


class Refused(Exception):
    """A file that is not to be read as a policy file: not a regular file, or reached through
    a link to another user's file (the message says which)."""


def open_policy_file(path: str) -> tuple[int, os.stat_result]:
    """A descriptor of the policy file at `path` (the caller closes it) and its fstat, opened
    by the reader's rules: non-blocking (a FIFO never hangs the reader), a regular file, and a
    link only to a file of the link's own owner or when root owns the link. OSError when it
    cannot be opened (FileChanged: swapped while it was opened); Refused otherwise."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"{_kind(info.st_mode)}, not a regular file")
        refused = _foreign_link(path, info)
        if refused:
            raise Refused(refused)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _foreign_link(path: str, opened: os.stat_result) -> str | None:
    """Why the file opened at `path` (`opened`, its fstat) must not be read, or None.

    Checked after the open, against the descriptor: a link is refused unless root or the
    target's owner owns it. FileChanged when `path` is gone or is no link and not the file
    opened (it was swapped meanwhile, perhaps from a link to another user's file)."""
    try:
        entry = os.lstat(path)
    except OSError as exc:
        raise FileChanged(exc.errno, f"{exc.strerror} (changed while it was read?)") from None
    if stat.S_ISLNK(entry.st_mode):
        if entry.st_uid in (0, opened.st_uid):
            return None
        return (
            f"a link owned by uid {entry.st_uid} to a file owned by uid {opened.st_uid}; "
            "a link is followed only to a file of its own owner (or when root owns it): "
            "copy the file into the directory, or give the link the file's owner"
        )
    if (entry.st_dev, entry.st_ino) != (opened.st_dev, opened.st_ino):
        raise FileChanged(0, "replaced while it was opened; read again")
    return None


def _read_at_most(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _too_big(file: str, size: int, limits: InputLimits) -> Diagnostic:
    what = f"file is larger than {limits.file_bytes:,} bytes ({size:,} or more)"
    return error(Location(file), over_limit(what))


def _decode(file: str, data: bytes) -> tuple[str | None, Diagnostic | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start : exc.start + 1].hex()
        where = Location(file, line, column)
        return None, error(where, f"file is not UTF-8: byte 0x{byte} at this position")


def _why(exc: OSError | Refused) -> str:
    return _reason(exc) if isinstance(exc, OSError) else str(exc)


def _reason(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"{reason} (removed while the directory was read?)"
    return reason


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"
