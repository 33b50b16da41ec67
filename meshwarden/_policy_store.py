"""Policies in etcd: every `apply` is a numbered revision (its files, when, who, why), and the
head names the revision replicas serve.

Keys under the store's prefix:
  policy/head                 {"revision": N}: what replicas serve
  policy/rev/000000000042     the revision record: revision, time, who, message, digest, and
                              its files as {path: sha256}
  policy/blob/SHA256          a file's bytes (content-addressed: an unchanged file is stored once)

Blobs are written first (unreferenced blobs are harmless); then one transaction writes the new
record and moves the head, on the condition that the head is still the one the apply read: of
two racing applies exactly one lands, the other is told so and writes nothing visible. etcd
refuses a transaction of more than 128 operations or 1.5 MiB by default, which is why the blobs
are not part of it."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import hashlib
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshwarden._etcd import Etcd, KeyValue, StoreUnavailable, mod_revision_is, put_op

__all__ = [
    "ConcurrentApply",
    "PolicyRevision",
    "PolicyStore",
    "RevisionNotFound",
    "StoreCorrupt",
    "StoreUnavailable",
    "who_am_i",
]

HEAD = "policy/head"


class ConcurrentApply(Exception):
    """Another apply (or rollback) moved the head since this one read it."""


class RevisionNotFound(Exception):
    """No such revision in the store."""


class StoreCorrupt(Exception):
    """A policy key of the store holds a value meshwarden does not write (by hand, by another
    program): the message names the key and says what is wrong."""


def _record(key: bytes, data: bytes, what: str) -> dict[str, Any]:
    """The JSON object stored at `key`; StoreCorrupt naming the key when it is not one."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        record = None
    if not isinstance(record, dict):
        raise StoreCorrupt(f"{key.decode(errors='replace')} in the store is not {what}")
    return record


def _revision_number(key: bytes, value: object) -> int:
    if type(value) is not int or value < 0:
        raise StoreCorrupt(
            f"{key.decode(errors='replace')} in the store names no revision number ({value!r})"
        )
    return value


def who_am_i() -> str:
    """user@host of this process, recorded with each revision."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def files_digest(files: Mapping[str, str]) -> str:
    """One digest of a snapshot's {path: sha256}: equal snapshots have equal digests."""
    text = json.dumps(sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PolicyRevision:
    """One applied snapshot: its files by path (sha256 of each) and where it came from."""

    revision: int
    time: str  # ISO 8601, UTC
    who: str  # user@host
    message: str
    files: Mapping[str, str] = field(default_factory=dict)  # path -> sha256
    rollback_of: int | None = None

    @property
    def digest(self) -> str:
        return files_digest(self.files)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "revision": self.revision,
            "time": self.time,
            "who": self.who,
            "message": self.message,
            "digest": self.digest,
            "files": len(self.files),
        }
        if self.rollback_of is not None:
            out["rollbackOf"] = self.rollback_of
        return out

    def encode(self) -> bytes:
        record = {
            "revision": self.revision,
            "time": self.time,
            "who": self.who,
            "message": self.message,
            "files": dict(self.files),
            "rollbackOf": self.rollback_of,
        }
        return json.dumps(record, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes, key: bytes = b"a revision record") -> PolicyRevision:
        """The record `encode` wrote; StoreCorrupt naming `key` for anything else."""
        record = _record(key, data, "a policy revision record")
        time, who, message = (record.get(name) for name in ("time", "who", "message"))
        files, rollback_of = record.get("files"), record.get("rollbackOf")
        if not (
            isinstance(time, str)
            and isinstance(who, str)
            and isinstance(message, str)
            and isinstance(files, dict)
            and all(isinstance(p, str) and _is_digest(d) for p, d in files.items())
            and (rollback_of is None or type(rollback_of) is int)
        ):
            raise StoreCorrupt(
                f"{key.decode(errors='replace')} in the store is not a policy revision record"
            )
        revision = _revision_number(key, record.get("revision"))
        return cls(revision, time, who, message, files, rollback_of)


class PolicyStore:
    """The policy part of the shared store."""

    def __init__(self, etcd: Etcd, prefix: str = "/meshwarden/") -> None:
        self.etcd = etcd
        self.prefix = prefix

    def key(self, name: str) -> bytes:
        return (self.prefix + name).encode()

    def _rev_key(self, revision: int) -> bytes:
        return self.key(f"policy/rev/{revision:012d}")

    def _blob_key(self, digest: str) -> bytes:
        return self.key(f"policy/blob/{digest}")

    async def head(self) -> tuple[int, int]:
        """(the current revision or 0, the etcd mod revision of the head key or 0)."""
        found, _ = await self.etcd.get(self.key(HEAD))
        if found is None:
            return 0, 0
        return head_revision(found), found.mod_revision

    async def revision(self, number: int) -> PolicyRevision:
        found, _ = await self.etcd.get(self._rev_key(number))
        if found is None:
            raise RevisionNotFound(f"revision {number} is not in the store")
        return PolicyRevision.decode(found.value, found.key)

    async def history(self) -> list[PolicyRevision]:
        found, _ = await self.etcd.get_prefix(self.key("policy/rev/"))
        records = (PolicyRevision.decode(kv.value, kv.key) for kv in found)
        return sorted(records, key=lambda r: r.revision)

    async def contents(
        self, record: PolicyRevision, known: Mapping[str, bytes] | None = None
    ) -> dict[str, bytes]:
        """The files of a revision: {path: bytes}. Blobs whose digest is in `known` (sha256 →
        bytes, e.g. the previous revision's) are not read again; the others are read
        concurrently."""
        known = known or {}
        missing = sorted({d for d in record.files.values() if d not in known})
        fetched = await asyncio.gather(*(self.etcd.get(self._blob_key(d)) for d in missing))
        blobs = dict(known)
        for digest, (found, _) in zip(missing, fetched, strict=True):
            if found is not None:
                blobs[digest] = found.value
        out = {}
        for path, digest in sorted(record.files.items()):
            if digest not in blobs:
                raise RevisionNotFound(
                    f"revision {record.revision}: the content of {path} "
                    f"({digest[:12]}) is missing from the store"
                )
            out[path] = blobs[digest]
        return out

    async def apply(
        self,
        files: Mapping[str, bytes],
        message: str,
        who: str,
        expected_head: int | None = None,
        rollback_of: int | None = None,
    ) -> PolicyRevision | None:
        """Write `files` as the next revision; None when they equal the current head's (nothing
        written). With `expected_head`, refuse (ConcurrentApply) unless the head is still that
        revision. Raises ConcurrentApply when another apply landed in between."""
        current, head_mod = await self.head()
        if expected_head is not None and current != expected_head:
            raise ConcurrentApply(f"the store is at revision {current}, not {expected_head}")
        digests = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
        if current and (await self.revision(current)).files == digests:
            return None
        for path, data in files.items():
            await self.etcd.put(self._blob_key(digests[path]), data)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        record = PolicyRevision(current + 1, now, who, message, digests, rollback_of)
        reply = await self.etcd.txn(
            [mod_revision_is(self.key(HEAD), head_mod)],
            [
                put_op(self._rev_key(record.revision), record.encode()),
                put_op(self.key(HEAD), json.dumps({"revision": record.revision}).encode()),
            ],
        )
        if not reply.succeeded:
            latest, _ = await self.head()
            raise ConcurrentApply(
                f"another apply landed revision {latest} while this one "
                f"was writing revision {record.revision}; nothing was "
                "written, re-run to apply on top of it"
            )
        return record

    async def rollback(self, target: int, who: str, message: str = "") -> PolicyRevision | None:
        """A new revision with the files of `target` (None: the head already has them)."""
        record = await self.revision(target)
        files = await self.contents(record)
        text = message or f"rollback to revision {target}"
        return await self.apply(files, text, who, rollback_of=target)

    def head_key(self) -> bytes:
        return self.key(HEAD)

    async def snapshot_at_head(self) -> tuple[PolicyRevision, dict[str, bytes]] | None:
        """The head revision and its files (None: nothing applied yet)."""
        current, _ = await self.head()
        if current == 0:
            return None
        record = await self.revision(current)
        return record, await self.contents(record)


def head_revision(value: KeyValue) -> int:
    """The revision a head key's value names (0 for a deleted head); StoreCorrupt for a value
    that names none."""
    if not value.value:
        return 0
    record = _record(value.key, value.value, 'a policy head ({"revision": N})')
    return _revision_number(value.key, record.get("revision"))


def _is_digest(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )
