"""A replica's policy source: the shared store's head revision, followed by an etcd watch.

It offers what a settled policy directory offers `Policies` (`poll()` returns the contents once
per new revision, `settling`, `forget()`), so everything after it (compile, the Mesh guard,
keeping the last good mesh, content-hash xDS versions) is the same code for both. The files
keep the names they were applied with: equal revisions compile to equal versions on every
replica.

When etcd cannot be reached the replica keeps serving what it has, says so (`reachable`,
`error`), and catches up from the head when etcd is back (a watch that was cut loses nothing:
the head is re-read before watching again). A head or revision record that is not what `apply`
writes (a value put by hand, another program) is the same: the last good policies keep
serving, `error` names the key, and the next good head is followed again."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time

from meshwarden._etcd import StoreUnavailable
from meshwarden._policy_files import DirectoryContents, PolicyFile
from meshwarden._policy_store import (
    PolicyRevision,
    PolicyStore,
    RevisionNotFound,
    StoreCorrupt,
    head_revision,
)

__all__ = ["StoreSource"]

log = logging.getLogger(__name__)
RETRY_SECONDS = 0.5  # between attempts while etcd is unreachable
PROBE_SECONDS = 1.0  # how often a replica checks that etcd still answers


def contents_of(record: PolicyRevision, files: dict[str, bytes]) -> DirectoryContents:
    policy_files = tuple(
        PolicyFile(name, data, hashlib.sha256(data).hexdigest())
        for name, data in sorted(files.items())
    )
    fingerprint = tuple((f.path, record.revision, len(f.content)) for f in policy_files)
    return DirectoryContents(fingerprint, policy_files)


class StoreSource:
    """The head revision of the store, delivered to `Policies` once per change."""

    settle = 0.0

    def __init__(self, store: PolicyStore) -> None:
        self.store = store
        self.revision = 0  # the newest revision read (delivered, or waiting to be)
        self.delivered = 0  # the revision `Policies` took last
        self.unreachable: str | None = "not connected yet"  # why etcd is not reachable now
        self.corrupt: str | None = None  # why the head revision cannot be read, now
        self.unreachable_since: float | None = None
        self._pending: DirectoryContents | None = None
        self._lock = threading.Lock()  # poll() runs in a worker thread
        self._blobs: dict[str, bytes] = {}  # sha256 → bytes of the newest revision read
        self._wakeup: asyncio.Event | None = None

    async def changed(self, timeout: float) -> None:
        """Return as soon as a new revision was read (then `poll()` has it), or after
        `timeout`: the server's policy loop waits here instead of polling on a timer."""
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._pending is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        self._wakeup.clear()

    @property
    def error(self) -> str | None:
        """Why this replica cannot follow the store's head now (None: it does)."""
        return self.unreachable or self.corrupt

    @property
    def reachable(self) -> bool:
        """Whether etcd answers (a corrupt head is an `error`, not unreachability)."""
        return self.unreachable is None

    @property
    def settling(self) -> bool:
        return False

    def poll(self) -> DirectoryContents | None:
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                self.delivered = self.revision
        return pending

    def forget(self) -> None:
        """Nothing to forget: each revision is delivered once."""

    def _mark(self, error: str | None) -> None:
        if error is None and self.unreachable is not None:
            log.info("store reachable again")
            self.unreachable_since = None
        elif error is not None and self.unreachable is None:
            log.warning("store unreachable: %s (serving the last good policies)", error)
            self.unreachable_since = time.time()
        self.unreachable = error

    def _mark_corrupt(self, error: str | None) -> None:
        if error is not None and error != self.corrupt:
            log.error("store: %s (serving the last good policies)", error)
        elif error is None and self.corrupt is not None:
            log.info("store: the policy head is readable again")
        self.corrupt = error

    async def catch_up(self) -> int:
        """Read the head and queue its files when they are new; the etcd revision read at.
        Raises StoreUnavailable."""
        found, at = await self.store.etcd.get(self.store.head_key())
        self._mark(None)
        head = head_revision(found) if found is not None else 0
        if head and head != self.revision:
            await self._fetch(head)
        else:
            self._mark_corrupt(None)
        return at

    async def _fetch(self, revision: int) -> None:
        try:
            record = await self.store.revision(revision)
            files = await self.store.contents(record, self._blobs)
        except RevisionNotFound as exc:
            log.error("store: %s", exc)
            return
        except StoreCorrupt as exc:  # the watch goes on; the next head may be good
            self._mark_corrupt(str(exc))
            return
        self._mark_corrupt(None)
        self._blobs = {record.files[path]: data for path, data in files.items()}
        with self._lock:
            self._pending = contents_of(record, files)
            self.revision = revision
        if self._wakeup is not None:
            self._wakeup.set()
        log.info("store: policy revision %d (%d file(s))", revision, len(files))

    async def follow(self) -> None:
        """Forever: watch the head, fetch each new revision; ride out etcd outages."""
        while True:
            try:
                at = await self.catch_up()
                async for batch in self.store.etcd.watch(self.store.head_key(), at + 1):
                    self._mark(None)
                    for value in batch:
                        revision = head_revision(value)
                        if revision and revision != self.revision:
                            await self._fetch(revision)
            except StoreUnavailable as exc:
                self._mark(str(exc))
            except StoreCorrupt as exc:  # read again from the head after the pause
                self._mark_corrupt(str(exc))
            await asyncio.sleep(RETRY_SECONDS)

    async def probe(self) -> None:
        """Forever: a cheap linearizable read, so /healthz says when etcd is gone even while
        the watch has nothing to report."""
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                await self.store.etcd.get(self.store.head_key())
            except StoreUnavailable as exc:
                self._mark(str(exc))
            else:
                self._mark(None)
