"""State files: written atomically, private ones mode 0600 from the first byte."""

from __future__ import annotations

import os
from pathlib import Path


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` atomically (temporary file, fsync, rename) with `mode` (0600 by default)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(descriptor, mode)
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
