"""Values sealed with a key-encryption key (KEK), as the shared store keeps its secrets.

A sealed value is {"alg": "A256GCM", "nonce", "ciphertext"}: AES-256-GCM under the KEK, with
the etcd key name as associated data (a sealed value copied to another key does not open).

A KEK file holds one key (base64 of 32 bytes, `openssl rand -base64 32`) or, while the store is
being re-keyed, several, one per line: a value opens with any of them. A `Keyring` re-reads its
file when a value opens with none of the keys it holds, so a replica follows `meshwarden store
rekey` once the new key is in its file, without a restart. Whoever writes seals with the key
that opened the value it replaces: only `rekey` changes the store's key."""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshwarden._secret_file import read_secret_file
from meshwarden.identities import StateError

__all__ = ["Keyring", "is_sealed", "read_kek", "seal", "unseal"]

KEK_BYTES = 32
ALG = "A256GCM"


def read_kek(path: Path) -> tuple[bytes, ...]:
    """The key-encryption key(s) in `path`, one per line; StateError when the file is a
    symlink, readable by others, or a line is not base64 of 32 bytes."""
    text = read_secret_file(path, "key-encryption key")
    keys: list[bytes] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            key = base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEK_BYTES:
            keys = []
            break
        keys.append(key)
    if not keys:
        raise StateError(
            f"{path}: not a key-encryption key: expected base64 of {KEK_BYTES} "
            "bytes (openssl rand -base64 32), one key per line"
        )
    return tuple(dict.fromkeys(keys))


def seal(kek: bytes, name: bytes, plain: bytes) -> bytes:
    nonce = os.urandom(12)
    sealed = AESGCM(kek).encrypt(nonce, plain, name)
    return json.dumps(
        {
            "alg": ALG,
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(sealed).decode(),
        }
    ).encode()


def is_sealed(value: bytes) -> bool:
    """Whether a stored value is a sealed box (its shape, not whether a key opens it)."""
    if not value.startswith(b"{") or ALG.encode() not in value[:64]:
        return False
    try:
        box = json.loads(value)
    except ValueError:
        return False
    return isinstance(box, dict) and box.get("alg") == ALG and {"nonce", "ciphertext"} <= set(box)


def unseal(keys: tuple[bytes, ...], name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """The plain value and the key that opened it; StateError when none does."""
    try:
        box = json.loads(value)
        nonce, sealed = base64.b64decode(box["nonce"]), base64.b64decode(box["ciphertext"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise StateError(f"{name.decode()} in the store is not a sealed value") from None
    for key in keys:
        try:
            return AESGCM(key).decrypt(nonce, sealed, name), key
        except (InvalidTag, ValueError):
            continue
    raise StateError(
        f"{name.decode()} in the store does not open with this key-encryption key "
        "(another key, or the value was altered)"
    )


class Keyring:
    """The keys of a KEK file, re-read when a value opens with none of them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys = read_kek(path)
        self.sealing = self.keys[0]  # the key of the value read last: writes use it

    def open(self, name: bytes, value: bytes) -> bytes:
        """The plain value. Raises StateError (with the file named) when no key in the file,
        read again if need be, opens it."""
        try:
            plain, self.sealing = unseal(self.keys, name, value)
            return plain
        except StateError:
            fresh = read_kek(self.path)
            if fresh == self.keys:
                raise StateError(
                    f"{name.decode()} in the store does not open with this --kek-file "
                    f"{self.path} (another key, or the value was altered; after `meshwarden "
                    "store rekey` put the store's new key in that file)"
                ) from None
            self.keys = fresh
        plain, self.sealing = unseal(self.keys, name, value)
        return plain

    def seal(self, name: bytes, plain: bytes) -> bytes:
        return seal(self.sealing, name, plain)
