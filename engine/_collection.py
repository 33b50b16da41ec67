"""Pausing Python's cyclic garbage collector while a mesh is read or compiled.

Reading and compiling 10,000 policies allocates about a million long-lived objects (values,
marks, models, rules) and no cyclic garbage; with automatic collection on, the collector walks
all of them again and again as they are created (a third to a half of the time). Nested and
concurrent pauses are safe: only the outermost one that found collection on turns it back on.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic cyclic garbage collection inside the block (reading, compiling or checking
    a mesh, or a one-shot command that does all three); collection resumes after it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
