"""Re-keying the shared store: every sealed value under the prefix (the CA document with its
X.509 and JWT signing keys, and anything sealed later) opened with the old key-encryption key
and sealed with the new one, in ONE etcd transaction guarded by each value's revision.

Either every value is re-sealed or none is: a rekey that races a replica's CA rotation step
loses the compare and is retried on fresh values; one that cannot open a value with the old key
writes nothing. Running it again after it succeeded changes nothing."""

from __future__ import annotations

from dataclasses import dataclass

from meshwarden._etcd import Etcd, mod_revision_is, put_op
from meshwarden._sealed import is_sealed, seal, unseal
from meshwarden.identities import StateError

__all__ = ["Rekeyed", "rekey"]

ATTEMPTS = 5  # a replica writes a CA step at most once a tick: five losses are not a race
MAX_VALUES = 100  # under etcd's default --max-txn-ops (128)


@dataclass(frozen=True)
class Rekeyed:
    names: tuple[str, ...]  # the keys re-sealed (relative to the prefix)
    already: tuple[str, ...]  # the keys that were sealed with the new key already
    revision: int  # the etcd revision of the transaction (0: nothing written)


async def rekey(etcd: Etcd, prefix: str, old: tuple[bytes, ...], new: bytes) -> Rekeyed:
    """Re-seal every sealed value under `prefix` with `new`. Raises StateError (nothing is
    written) when a value opens with neither key or the store keeps changing,
    StoreUnavailable."""
    if new in old:
        raise StateError("the new key-encryption key is the old one")
    for _ in range(ATTEMPTS):
        found, _ = await etcd.get_prefix(prefix.encode())
        sealed = [kv for kv in found if is_sealed(kv.value)]
        if not sealed:
            raise StateError(f"nothing sealed under {prefix} (has a replica run on this store?)")
        if len(sealed) > MAX_VALUES:
            raise StateError(f"{len(sealed)} sealed values: more than one transaction holds")
        compares, writes, names, already = [], [], [], []
        for kv in sealed:
            name = kv.key.decode()[len(prefix) :]
            try:
                unseal((new,), kv.key, kv.value)
                already.append(name)
                continue
            except StateError:
                pass
            plain, _ = unseal(old, kv.key, kv.value)  # StateError: nothing is written
            compares.append(mod_revision_is(kv.key, kv.mod_revision))
            writes.append(put_op(kv.key, seal(new, kv.key, plain)))
            names.append(name)
        if not writes:
            return Rekeyed((), tuple(already), 0)
        reply = await etcd.txn(compares, writes)
        if reply.succeeded:
            return Rekeyed(tuple(names), tuple(already), int(reply.header.revision))
    raise StateError(f"the sealed values kept changing during {ATTEMPTS} attempts; run it again")
