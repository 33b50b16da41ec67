"""A server as one replica of several on the shared store (`server --store etcd://...`): its
policies, CA, join tokens and node records come from etcd; what it serves is otherwise the same
as a single server's.

Losing etcd: the replica goes on serving its last good policies and signing with the CA it has;
/healthz says `store.reachable: false` (status degraded); writes (token redemption, node
records, CA rotation) are refused until etcd answers again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from meshwarden._etcd import Etcd, StoreUnavailable, StoreUrl
from meshwarden._policy_store import PolicyStore
from meshwarden._shared_ca import SharedCa
from meshwarden._shared_nodes import SharedNodes, SharedTokens
from meshwarden._store_source import StoreSource
from meshwarden.identities import CaConfig, CertificateAuthority, Clock, StateError

__all__ = ["Replica"]

log = logging.getLogger(__name__)


class Replica:
    def __init__(self, url: StoreUrl, kek_file: Path, clock: Clock) -> None:
        self.url = url
        self.kek_file = kek_file
        self.clock = clock
        self.etcd = Etcd.of(url)
        self.source = StoreSource(PolicyStore(self.etcd, url.prefix))
        self.tokens = SharedTokens(self.etcd, url.prefix, clock)
        self.nodes = SharedNodes(self.etcd, url.prefix, clock)
        self._ca: SharedCa | None = None
        self.ca_error: str | None = None  # why the store's CA cannot be followed now

    async def open_ca(self, config: CaConfig) -> CertificateAuthority:
        """The store's CA (created there by the first replica). Raises StateError when the KEK
        file is unusable or does not open the stored CA, StoreUnavailable."""
        self._ca = SharedCa(self.etcd, self.url.prefix, self.kek_file, config, self.clock)
        return await self._ca.open()

    async def sync_ca(self) -> bool:
        """Adopt or write the next CA rotation step; True when the live CA changed. False
        (nothing rotates, the live CA keeps signing) while etcd is unreachable or the stored
        CA does not open with the KEK file (re-keyed, and the new key is not in the file yet)."""
        assert self._ca is not None
        try:
            changed = await self._ca.sync()
        except StoreUnavailable as exc:
            log.warning("CA not synchronised with the store: %s", exc)
            return False
        except StateError as exc:
            if str(exc) != self.ca_error:
                log.error("CA not synchronised with the store (serving the CA held): %s", exc)
            self.ca_error = str(exc)
            return False
        if self.ca_error is not None:
            log.info("CA synchronised with the store again")
        self.ca_error = None
        return changed

    def health(self) -> dict[str, Any]:
        source = self.source
        return {
            "url": str(self.url),
            "reachable": source.reachable,
            "revision": source.delivered,
            "error": source.error,
            "writes": "accepted" if source.reachable else "refused",
            "ca": self.ca_error or "ok",
        }

    async def close(self) -> None:
        await self.etcd.close()
