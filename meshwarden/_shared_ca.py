"""The CA every replica signs with, kept in the shared store encrypted with a key-encryption key.

etcd holds `ca` = {"alg": "A256GCM", "nonce", "ciphertext"}: the CA document (X.509 and JWT
authorities with their private keys) sealed with AES-256-GCM under the KEK, the key name as
associated data (a sealed value copied to another key does not open). The KEK is read from a
file on each replica (base64 of 32 bytes, mode 0600) and never written anywhere.

Creation and rotation are compare-and-swap on the key's etcd revision: the first replica to
write a CA (or a rotation step: prepare a new authority, activate it) wins; every other replica
adopts what the store holds on its next tick. A replica that cannot reach etcd keeps signing
with what it has and rotates nothing until etcd is back."""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshwarden._etcd import Etcd, mod_revision_is, put_op
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    Clock,
    StateError,
    decode_ca,
    encode_ca,
)

__all__ = ["SharedCa", "read_kek"]

KEK_BYTES = 32


def read_kek(path: Path) -> bytes:
    """The key-encryption key in `path`; StateError when the file is a symlink, readable by
    others, or not base64 of 32 bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(
            f"{path}: cannot read the key-encryption key: {exc.strerror or exc}"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{path}: the key-encryption key must be a regular file")
        if info.st_mode & 0o077:
            raise StateError(
                f"{path}: mode {stat.S_IMODE(info.st_mode):04o}: the key-encryption "
                "key must be readable by its owner only (chmod 600)"
            )
        text = handle.read(4096)
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEK_BYTES:
        raise StateError(
            f"{path}: not a key-encryption key: expected base64 of {KEK_BYTES} "
            "bytes (openssl rand -base64 32)"
        )
    return key


def seal(kek: bytes, name: bytes, plain: bytes) -> bytes:
    nonce = os.urandom(12)
    sealed = AESGCM(kek).encrypt(nonce, plain, name)
    return json.dumps(
        {
            "alg": "A256GCM",
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(sealed).decode(),
        }
    ).encode()


def unseal(kek: bytes, name: bytes, value: bytes) -> bytes:
    try:
        box = json.loads(value)
        nonce, sealed = base64.b64decode(box["nonce"]), base64.b64decode(box["ciphertext"])
        return AESGCM(kek).decrypt(nonce, sealed, name)
    except InvalidTag:
        raise StateError(
            f"{name.decode()} in the store does not open with this --kek-file "
            "(another key, or the value was altered)"
        ) from None
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise StateError(f"{name.decode()} in the store is not a sealed value") from None


def _slots(document: bytes) -> object:
    parsed = json.loads(document)
    return parsed.get("x509"), parsed.get("jwt")


class SharedCa:
    """The live CA of this replica, kept equal to the store's."""

    def __init__(self, etcd: Etcd, prefix: str, kek: bytes, config: CaConfig, clock: Clock) -> None:
        self.etcd = etcd
        self.key = (prefix + "ca").encode()
        self.bundle_key = (prefix + "bundle").encode()
        self.kek = kek
        self.config = config
        self.clock = clock
        self.mod_revision = 0  # of the state the live CA holds
        self.ca: CertificateAuthority | None = None

    def _writes(self, ca: CertificateAuthority) -> list[object]:
        """The sealed CA and, beside it in plain text, its public trust bundle (for `ca bundle
        --store`, which needs no key)."""
        return [
            put_op(self.key, seal(self.kek, self.key, encode_ca(ca))),
            put_op(self.bundle_key, ca.bundle().to_spiffe_json().encode()),
        ]

    def _decode(self, value: bytes) -> CertificateAuthority:
        return decode_ca(
            unseal(self.kek, self.key, value),
            self.config,
            self.clock,
            f"the CA in the store ({self.key.decode()})",
        )

    async def open(self) -> CertificateAuthority:
        """The store's CA; a new one, written to the store, when it has none (the first replica
        to write wins). Raises StateError, StoreUnavailable."""
        for _ in range(3):
            found, _ = await self.etcd.get(self.key)
            if found is not None:
                self.ca, self.mod_revision = self._decode(found.value), found.mod_revision
                return self.ca
            fresh = CertificateAuthority(self.config, self.clock)
            reply = await self.etcd.txn([mod_revision_is(self.key, 0)], self._writes(fresh))
            if reply.succeeded:
                self.ca, self.mod_revision = fresh, int(reply.header.revision)
                return fresh
        raise StateError("could not create or read the CA in the store")

    async def sync(self) -> bool:
        """One tick: adopt the store's CA when another replica changed it, and write the next
        rotation step when one is due (compare-and-swap: one replica wins, the others adopt
        its result next time). True when the live CA changed. Raises StoreUnavailable."""
        assert self.ca is not None
        found, _ = await self.etcd.get(self.key)
        if found is None:
            raise StateError(f"{self.key.decode()} was removed from the store")
        changed = False
        if found.mod_revision != self.mod_revision:
            self.ca.adopt(self._decode(found.value))
            self.mod_revision, changed = found.mod_revision, True
        stored = unseal(self.kek, self.key, found.value)
        bumped = json.loads(stored)
        bumped["sequence"] = int(bumped["sequence"]) + 1  # the bundle sequence of the next step
        candidate = decode_ca(
            json.dumps(bumped).encode(), self.config, self.clock, self.key.decode()
        )
        document = encode_ca(candidate)
        if _slots(document) == _slots(stored):
            return changed
        reply = await self.etcd.txn(
            [mod_revision_is(self.key, found.mod_revision)], self._writes(candidate)
        )
        if reply.succeeded:
            self.ca.adopt(candidate)
            self.mod_revision = int(reply.header.revision)
            return True
        return changed
