"""The CA every replica signs with, kept in the shared store encrypted with a key-encryption key.

etcd holds `ca`: the CA document (X.509 and JWT authorities with their private keys) sealed
under the KEK (see `_sealed`). The KEK is read from a file on each replica (base64 of 32 bytes,
mode 0600) and never written anywhere; after `meshwarden store rekey` a replica re-reads the
file and goes on with the new key, keeping its in-memory CA meanwhile.

Creation and rotation are compare-and-swap on the key's etcd revision: the first replica to
write a CA (or a rotation step: prepare a new authority, activate it) wins; every other replica
adopts what the store holds on its next tick. A replica that cannot reach etcd (or cannot open
what it holds) keeps signing with what it has and rotates nothing until it can."""

from __future__ import annotations

import json
from pathlib import Path

from meshwarden._etcd import Etcd, mod_revision_is, put_op
from meshwarden._sealed import Keyring, read_kek
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    Clock,
    StateError,
    decode_ca,
    encode_ca,
)

__all__ = ["SharedCa", "read_kek"]


def _slots(document: bytes) -> object:
    parsed = json.loads(document)
    return parsed.get("x509"), parsed.get("jwt")


class SharedCa:
    """The live CA of this replica, kept equal to the store's."""

    def __init__(
        self, etcd: Etcd, prefix: str, kek_file: Path, config: CaConfig, clock: Clock
    ) -> None:
        self.etcd = etcd
        self.key = (prefix + "ca").encode()
        self.bundle_key = (prefix + "bundle").encode()
        self.keyring = Keyring(kek_file)
        self.config = config
        self.clock = clock
        self.mod_revision = 0  # of the state the live CA holds
        self.document = b""  # the plain CA document the live CA holds
        self.ca: CertificateAuthority | None = None

    def _writes(self, ca: CertificateAuthority) -> list[object]:
        """The sealed CA and, beside it in plain text, its public trust bundle (for `ca bundle
        --store`, which needs no key)."""
        document = encode_ca(ca)
        return [
            put_op(self.key, self.keyring.seal(self.key, document)),
            put_op(self.bundle_key, ca.bundle().to_spiffe_json().encode()),
        ]

    def _decode(self, document: bytes) -> CertificateAuthority:
        return decode_ca(
            document, self.config, self.clock, f"the CA in the store ({self.key.decode()})"
        )

    async def open(self) -> CertificateAuthority:
        """The store's CA; a new one, written to the store, when it has none (the first replica
        to write wins). Raises StateError, StoreUnavailable."""
        for _ in range(3):
            found, _ = await self.etcd.get(self.key)
            if found is not None:
                self.document = self.keyring.open(self.key, found.value)
                self.ca, self.mod_revision = self._decode(self.document), found.mod_revision
                return self.ca
            fresh = CertificateAuthority(self.config, self.clock)
            reply = await self.etcd.txn([mod_revision_is(self.key, 0)], self._writes(fresh))
            if reply.succeeded:
                self.ca, self.mod_revision = fresh, int(reply.header.revision)
                self.document = encode_ca(fresh)
                return fresh
        raise StateError("could not create or read the CA in the store")

    async def sync(self) -> bool:
        """One tick: adopt the store's CA when another replica changed it, and write the next
        rotation step when one is due (compare-and-swap: one replica wins, the others adopt
        its result next time). True when the live CA changed. Raises StoreUnavailable, and
        StateError when the stored CA does not open with the KEK file (the live CA stays)."""
        assert self.ca is not None
        found, _ = await self.etcd.get(self.key)
        if found is None:
            raise StateError(f"{self.key.decode()} was removed from the store")
        changed = False
        stored = self.keyring.open(self.key, found.value)
        if found.mod_revision != self.mod_revision:
            if stored != self.document:  # not only sealed again (rekey)
                self.ca.adopt(self._decode(stored))
                changed = True
            self.mod_revision, self.document = found.mod_revision, stored
        bumped = json.loads(stored)
        bumped["sequence"] = int(bumped["sequence"]) + 1  # the bundle sequence of the next step
        candidate = self._decode(json.dumps(bumped).encode())
        document = encode_ca(candidate)
        if _slots(document) == _slots(stored):
            return changed
        reply = await self.etcd.txn(
            [mod_revision_is(self.key, found.mod_revision)], self._writes(candidate)
        )
        if reply.succeeded:
            self.ca.adopt(candidate)
            self.mod_revision, self.document = int(reply.header.revision), document
            return True
        return changed
