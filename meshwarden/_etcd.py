"""A small etcd v3 client over every member of a cluster: the part of the API the shared store
needs (range, txn, watch, leases), with failover between members.

The wire types are etcd's own `rpc.proto`, as generated code shipped by the `aetcd` package; its
`Client` talks to one member only, so the connection handling is ours: one gRPC channel per
member, the next member tried when one is unreachable or has no leader (a member cut off from
the quorum answers UNAVAILABLE "no leader" instead of stale data: every request is linearizable
and carries `hasleader`). After every member was tried for `timeout` seconds in all, the call
raises `StoreUnavailable`, never an RPC error."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from meshwarden._store_url import StoreAuth, StoreTls, StoreUrl

__all__ = [
    "Etcd",
    "KeyValue",
    "StoreAuth",
    "StoreRefused",
    "StoreTls",
    "StoreUnavailable",
    "StoreUrl",
    "delete_op",
    "mod_revision_is",
    "put_op",
    "value_is",
]

_RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_REQUIRE_LEADER = (("hasleader", "true"),)  # a member without a leader refuses, never serves stale


class StoreUnavailable(Exception):
    """No member of the etcd cluster answered (or none had a leader) in time."""


class StoreRefused(StoreUnavailable):
    """etcd answered but refused this client: a wrong user or password, a user without
    permission on the keys, authentication required or not enabled. Retrying does not help;
    a running replica treats it as an unreachable store (serves what it has, writes nothing)."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int


def put_op(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def mod_revision_is(key: bytes, revision: int) -> Any:
    """True when `key` was last written at `revision` (0: the key does not exist)."""
    return rpc.Compare(
        result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=key, mod_revision=revision
    )


def value_is(key: bytes, value: bytes) -> Any:
    return rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE, key=key, value=value)


def _token_expired(exc: grpc.aio.AioRpcError) -> bool:
    """etcd's answer to a token that expired (or was issued before an auth change)."""
    details = exc.details() or ""
    return "invalid auth token" in details or "revision of auth store is old" in details


def _prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix`."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


class Etcd:
    """Calls go to one member at a time; an unreachable member is left for the next one."""

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 5.0,
        tls: StoreTls | None = None,
        auth: StoreAuth | None = None,
    ) -> None:
        """Raises OSError (a TLS file), StateError (the password file)."""
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._credentials = tls.credentials() if tls else None
        self._current = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.auth = auth
        self._password = auth.password() if auth else ""
        self._token: str | None = None  # etcd's auth token, from Authenticate
        self._authenticating: asyncio.Lock | None = None

    @classmethod
    def of(cls, url: StoreUrl, timeout: float = 5.0) -> Etcd:
        """A client of the members (with the TLS and the user) of a store URL."""
        return cls(url.endpoints, timeout, url.tls, url.auth)

    def _channel(self) -> grpc.aio.Channel:
        endpoint = self.endpoints[self._current % len(self.endpoints)]
        channel = self._channels.get(endpoint)
        if channel is None and self._credentials is not None:
            channel = grpc.aio.secure_channel(endpoint, self._credentials)
        if channel is None:
            channel = grpc.aio.insecure_channel(endpoint)
        self._channels[endpoint] = channel
        return channel

    def _next_member(self) -> None:
        self._current += 1

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._token is None:
            return _REQUIRE_LEADER
        return (*_REQUIRE_LEADER, ("token", self._token))

    async def _call(self, stub: type, method: str, request: Any, authenticated: bool = True) -> Any:
        deadline = time.monotonic() + self.timeout
        last: grpc.aio.AioRpcError | None = None
        attempt = 0
        renewed = False  # the token is renewed once per call at most
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if authenticated and self.auth is not None and self._token is None:
                await self._authenticate()
            call = getattr(stub(self._channel()), method)
            try:
                per_member = min(left, max(0.5, self.timeout / len(self.endpoints)))
                return await call(request, timeout=per_member, metadata=self._metadata())
            except grpc.aio.AioRpcError as exc:
                if authenticated and not renewed and self.auth and _token_expired(exc):
                    self._token, renewed = None, True
                    continue
                if exc.code() not in _RETRIED:
                    refused = self._refused(exc, request)
                    if refused is not None:
                        raise refused from None
                    raise
                last = exc
            self._next_member()
            attempt += 1
            if attempt % len(self.endpoints) == 0:  # every member failed once: back off a little
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        reason = last.details() if last is not None else "timed out"
        raise StoreUnavailable(f"etcd ({','.join(self.endpoints)}) unavailable: {reason}")

    async def _authenticate(self) -> None:
        """Get a token for the URL's user (one Authenticate at a time; the others wait for its
        token). Raises StoreRefused for a wrong user or password."""
        assert self.auth is not None
        if self._authenticating is None:
            self._authenticating = asyncio.Lock()
        async with self._authenticating:
            if self._token is not None:
                return
            request = rpc.AuthenticateRequest(name=self.auth.user, password=self._password)
            reply = await self._call(rpc.AuthStub, "Authenticate", request, authenticated=False)
            self._token = str(reply.token)

    def _refused(self, exc: grpc.aio.AioRpcError, request: Any) -> StoreRefused | None:
        """StoreRefused with what to do, for etcd's authentication and permission errors."""
        details, user = exc.details() or "", self.auth.user if self.auth else None
        if "authentication failed" in details and self.auth is not None:
            return StoreRefused(
                f"etcd refused user {user!r}: wrong user name or password "
                f"(password-file {self.auth.password_file})"
            )
        if "authentication is not enabled" in details:
            return StoreRefused("etcd has authentication disabled: remove user= from the URL")
        if "user name is empty" in details or exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return StoreRefused(
                "etcd requires authentication: add ?user=NAME&password-file=FILE to the URL"
            )
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            key = getattr(request, "key", b"") or b""
            what = f" on {key.decode(errors='replace')}" if key else ""
            return StoreRefused(
                f"etcd user {user!r} has no permission{what}: grant its role readwrite on "
                "the store's prefix (etcdctl role grant-permission ROLE --prefix readwrite "
                "/meshwarden/)"
            )
        return None

    async def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        """The key (None when absent) and the store's revision at the time of the read."""
        reply = await self._call(rpc.KVStub, "Range", rpc.RangeRequest(key=key))
        found = reply.kvs[0] if reply.kvs else None
        value = KeyValue(found.key, found.value, found.mod_revision) if found else None
        return value, reply.header.revision

    async def get_prefix(self, prefix: bytes, revision: int = 0) -> tuple[list[KeyValue], int]:
        request = rpc.RangeRequest(key=prefix, range_end=_prefix_end(prefix), revision=revision)
        reply = await self._call(rpc.KVStub, "Range", request)
        found = [KeyValue(kv.key, kv.value, kv.mod_revision) for kv in reply.kvs]
        return found, reply.header.revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        request = rpc.PutRequest(key=key, value=value, lease=lease)
        reply = await self._call(rpc.KVStub, "Put", request)
        return int(reply.header.revision)

    async def txn(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> Any:
        """etcd's TxnResponse (`succeeded`, `responses`, `header.revision`)."""
        request = rpc.TxnRequest(
            compare=list(compare), success=list(success), failure=list(failure)
        )
        return await self._call(rpc.KVStub, "Txn", request)

    async def grant_lease(self, ttl: int) -> int:
        reply = await self._call(rpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl))
        return int(reply.ID)

    async def revoke_lease(self, lease: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._call(rpc.LeaseStub, "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))

    async def keep_alive(self, lease: int) -> int:
        """Refresh a lease once; its remaining TTL (0: it expired)."""
        reply = await self._call(
            rpc.LeaseStub, "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease)
        )
        if reply.TTL <= 0:
            return 0
        stream = rpc.LeaseStub(self._channel()).LeaseKeepAlive(
            iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
            timeout=self.timeout,
            metadata=self._metadata(),
        )
        try:
            async for answer in stream:
                return int(answer.TTL)
        except grpc.aio.AioRpcError as exc:
            self._next_member()
            raise StoreUnavailable(f"etcd lease keep-alive failed: {exc.details()}") from None
        return 0

    async def watch(
        self, key: bytes, start_revision: int, prefix: bool = False
    ) -> AsyncIterator[list[KeyValue]]:
        """The keys written (or, with an empty value, deleted) from `start_revision` on, one
        list per etcd revision batch. Raises StoreUnavailable when the member goes away or
        loses its leader; the caller watches again from its last revision + 1."""
        create = rpc.WatchCreateRequest(
            key=key, start_revision=start_revision, progress_notify=True
        )
        if prefix:
            create.range_end = _prefix_end(key)
        if self.auth is not None and self._token is None:
            await self._authenticate()
        stream = rpc.WatchStub(self._channel()).Watch(metadata=self._metadata())
        try:  # the sending side stays open (etcd ends a watch whose client half-closed)
            await stream.write(rpc.WatchRequest(create_request=create))
            async for reply in stream:
                if reply.canceled:
                    reason = reply.cancel_reason or "compacted"
                    raise StoreUnavailable(f"etcd watch cancelled: {reason}")
                yield [KeyValue(e.kv.key, e.kv.value, e.kv.mod_revision) for e in reply.events]
        except grpc.aio.AioRpcError as exc:
            self._next_member()
            if _token_expired(exc):
                self._token = None
            raise StoreUnavailable(f"etcd watch ended: {exc.details()}") from None
        finally:
            stream.cancel()
        self._next_member()
        raise StoreUnavailable("etcd watch ended")

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
