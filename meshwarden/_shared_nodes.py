"""Join tokens and node records in the shared store, so any replica can redeem a token and
recognise any node.

  tokens/SHA256(token)   {"node", "expires"}: a pending join token (the token itself is never
                         stored); leased, etcd drops it an hour after it expired
  nodes/FINGERPRINT      {"node", "notAfter"}: a node SVID issued through attestation; leased
                         until the certificate expires

A token is redeemed by a transaction that deletes its key if it is unchanged since read and
leaves a claim (`redeemed/SHA256(token)`: this redemption's random id): of any number of
concurrent redemptions on any replicas exactly one transaction succeeds. A redemption whose
answer was lost (a timeout, a member that went away) and is retried finds its own claim and
still wins, never a second one. Node records never change once written,
so a replica keeps those it has looked up. An unreachable store is `StoreUnreachable` (the node
API answers UNAVAILABLE, and the agent tries another server), never an admission."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets

from cryptography import x509

from meshwarden._etcd import Etcd, StoreUnavailable, delete_op, mod_revision_is, put_op
from meshwarden.identities import (
    AttestationError,
    Clock,
    StoreUnreachable,
    check_node_name,
    fingerprint,
)

__all__ = ["SharedNodes", "SharedTokens"]

GRACE = dt.timedelta(hours=1)  # an expired token is kept this long, to say "expired"


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class SharedTokens:
    def __init__(self, etcd: Etcd, prefix: str, clock: Clock) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.clock = clock

    def _key(self, token: str, kind: str = "tokens") -> bytes:
        return f"{self.prefix}{kind}/{hashlib.sha256(token.encode()).hexdigest()}".encode()

    async def create(self, node: str, ttl: dt.timedelta) -> str:
        """A new single-use token for `node`. Raises ValueError, StoreUnavailable."""
        if ttl <= dt.timedelta(0):
            raise ValueError("a join token's TTL must be positive")
        token = secrets.token_hex(24)  # as JoinTokens: 192 bits, never starts with "-"
        expires = self.clock.now() + ttl
        value = json.dumps({"node": check_node_name(node), "expires": expires.isoformat()})
        lease = await self.etcd.grant_lease(int((ttl + GRACE).total_seconds()))
        await self.etcd.put(self._key(token), value.encode(), lease)
        return token

    async def redeem_async(self, token: str) -> str:
        """Consume `token` (on every replica at once); its node name."""
        try:
            value = await self._claim(token)
        except StoreUnavailable as exc:
            raise StoreUnreachable(str(exc)) from None
        if value is None:
            raise AttestationError("join token is unknown or was already used")
        pending = json.loads(value)
        expires = dt.datetime.fromisoformat(pending["expires"])
        if expires <= self.clock.now():
            raise AttestationError(f"join token expired at {_stamp(expires)}")
        return str(pending["node"])

    async def _claim(self, token: str) -> bytes | None:
        """The token's value when this call redeemed it; None when it is unknown or another
        redemption won (across every replica)."""
        key, claimed = self._key(token), self._key(token, "redeemed")
        found, _ = await self.etcd.get(key)
        if found is None:
            return None
        claim = secrets.token_hex(16).encode()
        lease = await self.etcd.grant_lease(int(GRACE.total_seconds()))
        reply = await self.etcd.txn(
            [mod_revision_is(key, found.mod_revision)],
            [delete_op(key), put_op(claimed, claim, lease)],
        )
        if reply.succeeded:
            return found.value
        owner, _ = await self.etcd.get(claimed)  # a retried transaction that had succeeded
        return found.value if owner is not None and owner.value == claim else None


class SharedNodes:
    def __init__(self, etcd: Etcd, prefix: str, clock: Clock) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.clock = clock
        # fingerprint -> (node, notAfter), as read from or written to etcd
        self._known: dict[str, tuple[str, dt.datetime]] = {}

    def _key(self, print_: str) -> bytes:
        return f"{self.prefix}nodes/{print_}".encode()

    async def record(self, certificate: x509.Certificate, node: str) -> None:
        expires = certificate.not_valid_after_utc
        value = json.dumps({"node": node, "notAfter": expires.isoformat()}).encode()
        seconds = max(60, int((expires - self.clock.now()).total_seconds()) + 60)
        try:
            lease = await self.etcd.grant_lease(seconds)
            await self.etcd.put(self._key(fingerprint(certificate)), value, lease)
        except StoreUnavailable as exc:
            raise StoreUnreachable(str(exc)) from None
        self._remember(fingerprint(certificate), node, expires)

    def _remember(self, print_: str, node: str, expires: dt.datetime) -> None:
        now = self.clock.now()
        self._known = {k: v for k, v in self._known.items() if v[1] > now}
        self._known[print_] = (node, expires)

    async def lookup(self, certificate: x509.Certificate) -> str:
        print_ = fingerprint(certificate)
        known = self._known.get(print_)
        if known is not None:
            return known[0]
        try:
            found, _ = await self.etcd.get(self._key(print_))
        except StoreUnavailable as exc:
            raise StoreUnreachable(str(exc)) from None
        if found is None:
            raise AttestationError(
                "the client certificate is not a node SVID issued by "
                "attestation; attest with a join token"
            )
        node = str(json.loads(found.value)["node"])
        self._remember(print_, node, certificate.not_valid_after_utc)
        return node
