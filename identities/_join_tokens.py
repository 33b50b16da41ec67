"""Node identities and single-use join tokens (node attestation, like SPIRE's join_token).

A token is a random secret bound to a node name with an expiry; redeeming it consumes it whether
or not the rest of the attestation succeeds. Only SHA-256 digests of tokens are kept.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities._clock import Clock
from meshwarden.identities._errors import AttestationError

NODE_PATH_PREFIX = "/meshwarden/node/"
SERVER_PATH = "/meshwarden/server"
# The DNS SAN of the server's certificate; agents check it (grpc's target name override).
SERVER_DNS_NAME = "meshwarden-server"
_NODE_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
DEFAULT_TOKEN_TTL = dt.timedelta(minutes=10)


def check_node_name(name: str) -> str:
    """`name` when it is a valid node name (a DNS label-like name); ValueError otherwise."""
    if not _NODE_NAME.fullmatch(name):
        raise ValueError(
            f"node name {name!r} must be 1-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def node_spiffe_id(trust_domain: TrustDomain, node: str) -> SpiffeId:
    return SpiffeId(trust_domain, NODE_PATH_PREFIX + check_node_name(node))


def server_spiffe_id(trust_domain: TrustDomain) -> SpiffeId:
    """The control plane's own SPIFFE ID in the trust domain."""
    return SpiffeId(trust_domain, SERVER_PATH)


def node_name_of(spiffe_id: SpiffeId) -> str:
    """The node name of `spiffe://td/meshwarden/node/NAME`; AttestationError for other IDs."""
    name = spiffe_id.path.removeprefix(NODE_PATH_PREFIX)
    if name == spiffe_id.path or not _NODE_NAME.fullmatch(name):
        raise AttestationError(f"{spiffe_id} is not a node identity")
    return str(name)


@dataclass(frozen=True)
class _Pending:
    node: str
    expires_at: dt.datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class JoinTokens:
    """One-time, expiring tokens a node presents to attest itself to the server."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._pending: dict[str, _Pending] = {}

    def create(self, node: str, ttl: dt.timedelta = DEFAULT_TOKEN_TTL) -> str:
        if ttl <= dt.timedelta(0):
            raise ValueError("a join token's TTL must be positive")
        # 192 bits of hex: safe on any command line (a token_urlsafe may start with "-", which
        # `meshwarden agent --join-token -abc` would read as an option)
        token = secrets.token_hex(24)
        self._pending[_digest(token)] = _Pending(check_node_name(node), self._clock.now() + ttl)
        return token

    async def redeem_async(self, token: str) -> str:
        """`redeem`, as the node API calls it (a shared store's tokens are redeemed over the
        network)."""
        return self.redeem(token)

    def redeem(self, token: str) -> str:
        """Consume `token` and return its node name; raise AttestationError if unusable."""
        now = self._clock.now()
        self._pending = {k: p for k, p in self._pending.items() if p.expires_at > now - _GRACE}
        pending = self._pending.pop(_digest(token), None)
        if pending is None:
            raise AttestationError("join token is unknown or was already used")
        if pending.expires_at <= now:
            raise AttestationError(f"join token expired at {pending.expires_at:%Y-%m-%dT%H:%M:%SZ}")
        return pending.node


# Expired tokens are remembered a little longer so the error says "expired", not "unknown".
_GRACE = dt.timedelta(hours=1)
