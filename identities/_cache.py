"""The agent's current identities (SVIDs with their keys) and trust bundle, with change
notification for streaming APIs (Workload API, SDS). Lives on one asyncio loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshwarden.engine import SpiffeId
from meshwarden.identities._bundle import TrustBundle
from meshwarden.identities._registry import unix_selectors_of
from meshwarden.identities._validate import X509Svid


@dataclass(frozen=True)
class CachedIdentity:
    """A workload's SPIFFE ID, the selectors that admit a caller to it, and its X.509-SVID."""

    spiffe_id: SpiffeId
    selectors: tuple[str, ...]
    svid: X509Svid


class JwtMinter(Protocol):
    def __call__(self, spiffe_id: SpiffeId, audience: Sequence[str]) -> Awaitable[str]: ...


class IdentityCache:
    """The identities a node agent holds, versioned so servers can wait for changes."""

    def __init__(self, bundle: TrustBundle | None = None) -> None:
        self._identities: tuple[CachedIdentity, ...] = ()
        # Each identity with the unix selectors a caller needs all of (none: no caller matches),
        # made once per update instead of once per identity and call.
        self._wanted: tuple[tuple[CachedIdentity, frozenset[str]], ...] = ()
        self._bundle = bundle
        self._version = 0
        self._event = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    @property
    def identities(self) -> tuple[CachedIdentity, ...]:
        return self._identities

    def bundle(self) -> TrustBundle | None:
        return self._bundle

    def identities_for(self, caller: frozenset[str]) -> tuple[CachedIdentity, ...]:
        """Every identity whose unix selectors the caller has, in registry order (a Workload
        without unix selectors matches no caller: `_registry.matches_caller`)."""
        return tuple(i for i, wanted in self._wanted if wanted and wanted <= caller)

    def update(
        self,
        identities: Sequence[CachedIdentity] | None = None,
        bundle: TrustBundle | None = None,
    ) -> None:
        """Replace the identities and/or the bundle and wake every waiting stream."""
        if identities is not None:
            self._identities = tuple(identities)
            self._wanted = tuple((i, unix_selectors_of(i.selectors)) for i in self._identities)
        if bundle is not None:
            self._bundle = bundle
        self._version += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for_change(self, seen_version: int) -> int:
        while self._version == seen_version:
            await self._event.wait()
        return self._version
