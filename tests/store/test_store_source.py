"""A replica's policy source against a real etcd: a new revision reads only the files that
changed (a 10,000-policy store is not read again on every apply), and the server's policy loop
is woken as soon as the watch has read a revision instead of on its next poll."""

from __future__ import annotations

import asyncio
import hashlib

from meshwarden._etcd import Etcd, KeyValue
from meshwarden._policy_store import HEAD, PolicyStore
from meshwarden._store_source import StoreSource

from .etcd_cluster import EtcdCluster
from .replicas import shop_files

NEVER = 3600.0  # seconds: a wait that only a wake-up ends within the test's bound


class ReadingEtcd(Etcd):
    """The real etcd client, remembering every key it reads."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(endpoints, timeout=15)
        self.read: list[bytes] = []

    async def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        self.read.append(key)
        return await super().get(key)


def _changed(files: dict[str, bytes]) -> dict[str, bytes]:
    out = dict(files)
    out["policies.yaml"] += b"\n# reviewed\n"
    return out


def test_a_new_revision_reads_only_the_files_that_changed(etcd: EtcdCluster) -> None:
    async def scenario() -> tuple[dict[str, bytes], list[bytes], dict[str, bytes]]:
        writer, reader = Etcd(etcd.endpoints, timeout=15), ReadingEtcd(etcd.endpoints)
        try:
            store = PolicyStore(writer)
            files = shop_files()
            await store.apply(files, "first", "test@host")
            source = StoreSource(PolicyStore(reader))
            await source.catch_up()
            first = source.poll()
            assert first is not None and {f.path: f.content for f in first.files} == files
            reader.read.clear()
            await store.apply(_changed(files), "second", "test@host")
            await source.catch_up()
            second = source.poll()
            assert second is not None
            return files, list(reader.read), {f.path: f.content for f in second.files}
        finally:
            await writer.close()
            await reader.close()

    files, read, delivered = asyncio.run(scenario())
    assert len(files) == 3
    assert delivered == _changed(files)
    digest = hashlib.sha256(_changed(files)["policies.yaml"]).hexdigest()
    assert [key for key in read if b"/policy/blob/" in key] == [
        f"/meshwarden/policy/blob/{digest}".encode()
    ]


def test_the_policy_loop_is_woken_as_soon_as_the_watch_read_a_revision(etcd: EtcdCluster) -> None:
    async def scenario() -> dict[str, bytes]:
        writer, reader = Etcd(etcd.endpoints, timeout=15), Etcd(etcd.endpoints, timeout=15)
        follower: asyncio.Task[None] | None = None
        try:
            store = PolicyStore(writer)
            await store.apply(shop_files(), "first", "test@host")
            source = StoreSource(PolicyStore(reader))
            follower = asyncio.create_task(source.follow())
            await asyncio.wait_for(source.changed(NEVER), 30)
            assert source.poll() is not None and source.delivered == 1
            await asyncio.wait_for(source.changed(0.01), 30)  # nothing new: the timeout ends it
            assert source.poll() is None
            await store.apply(_changed(shop_files()), "second", "test@host")
            await asyncio.wait_for(source.changed(NEVER), 30)
            contents = source.poll()
            assert contents is not None and source.delivered == 2
            return {f.path: f.content for f in contents.files}
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
            await writer.close()
            await reader.close()

    assert asyncio.run(scenario()) == _changed(shop_files())


def test_a_head_or_record_written_by_hand_with_garbage_is_reported_and_followed_past(
    etcd: EtcdCluster,
) -> None:
    """A value put into the policy keys by hand (etcdctl, another program) used to end the
    follower with a JSONDecodeError, which stopped every replica of the store at once: now the
    last good revision keeps serving, `error` names the key, and the next good head is read."""

    async def corrupted(key: bytes, value: bytes) -> tuple[bool, str | None, int]:
        """Put `value` at `key`; what the follower says once it reacted (bounded wait)."""
        assert follower is not None
        before = source.error
        await writer.put(key, value)
        for _ in range(300):  # 30 s at most; the watch reacts within a retry pause
            if follower.done() or source.error != before:
                break
            await asyncio.sleep(0.1)
        assert source.delivered == 1
        assert source.reachable  # etcd answers: the head is corrupt, the store is not down
        return follower.done(), source.error, source.revision

    async def scenario() -> list[tuple[bool, str | None, int]]:
        nonlocal source, follower, writer
        writer, reader = Etcd(etcd.endpoints, timeout=15), Etcd(etcd.endpoints, timeout=15)
        try:
            store = PolicyStore(writer)
            await store.apply(shop_files(), "first", "test@host")
            source = StoreSource(PolicyStore(reader))
            follower = asyncio.create_task(source.follow())
            await asyncio.wait_for(source.changed(NEVER), 30)
            assert source.poll() is not None and source.reachable
            seen = [await corrupted(store.key(HEAD), b"garbage{")]
            seen.append(await corrupted(store.key(HEAD), b'{"revision": "1"}'))
            await writer.put(store.key("policy/rev/000000000002"), b'{"revision": 2}')
            seen.append(await corrupted(store.key(HEAD), b'{"revision": 2}'))
            if follower.done():
                return seen
            await writer.put(store.key(HEAD), b'{"revision": 1}')  # repaired by hand
            await store.apply(_changed(shop_files()), "after the repair", "test@host")
            await asyncio.wait_for(source.changed(NEVER), 30)
            contents = source.poll()
            assert contents is not None and source.delivered == 2  # over the garbage record
            seen.append((follower.done(), source.error, source.delivered))
            return seen
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
            await writer.close()
            await reader.close()

    source: StoreSource
    follower: asyncio.Task[None] | None = None
    writer: Etcd
    head, rev2 = "/meshwarden/policy/head", "/meshwarden/policy/rev/000000000002"
    assert asyncio.run(scenario()) == [
        (False, f'{head} in the store is not a policy head ({{"revision": N}})', 1),
        (False, f"{head} in the store names no revision number ('1')", 1),
        (False, f"{rev2} in the store is not a policy revision record", 1),
        (False, None, 2),
    ]
