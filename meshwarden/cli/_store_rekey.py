"""`meshwarden store rekey`: seal the shared store's secrets with a new key-encryption key."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from meshwarden.cli._common import CommandFailed, InputError, add_output_format, print_json
from meshwarden.cli._store import add_store

if TYPE_CHECKING:
    from meshwarden._rekey import Rekeyed

SUMMARY = "operations on the shared store itself (rekey)"
EXAMPLES = """\
examples:
  openssl rand -base64 32 > new.kek && chmod 600 new.kek
  meshwarden store rekey --store etcd://10.0.0.1:2379,10.0.0.2:2379 \\
      --kek-file /etc/meshwarden/kek --new-kek-file new.kek
see docs/operations.md ("Rotating the key-encryption key") for the whole procedure."""
REKEY_DESCRIPTION = (
    "Open every sealed value in the store (the CA with its X.509 and JWT signing keys) with "
    "the key in --kek-file and seal it with the key in --new-kek-file, all in one etcd "
    "transaction: either every value is re-sealed or none is. Running replicas keep signing "
    "with the CA they hold and continue once the new key is in their --kek-file (they read it "
    "again; no restart). Afterwards the old key opens nothing in the store."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("store", help=SUMMARY, description=SUMMARY, epilog=EXAMPLES)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    rekey = actions.add_parser(
        "rekey",
        help="seal the store's secrets with a new key-encryption key",
        description=REKEY_DESCRIPTION,
        epilog=EXAMPLES,
    )
    rekey.add_argument(
        "--kek-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the key the store is sealed with now (the replicas' --kek-file)",
    )
    rekey.add_argument(
        "--new-kek-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the new key: one line, base64 of 32 bytes (openssl rand -base64 32), mode 0600",
    )
    add_store(rekey)
    add_output_format(rekey)
    rekey.set_defaults(func=run_rekey)


def run_rekey(args: argparse.Namespace) -> int:
    from meshwarden._etcd import Etcd, StoreUnavailable
    from meshwarden._rekey import rekey
    from meshwarden._sealed import read_kek
    from meshwarden.identities import StateError

    try:
        old = read_kek(args.kek_file)
        new = read_kek(args.new_kek_file)
    except StateError as exc:
        raise InputError(str(exc)) from None
    if len(new) != 1:
        raise InputError(f"{args.new_kek_file}: give the new key alone (one line)")
    if new[0] in old:
        raise InputError(f"{args.new_kek_file}: the new key-encryption key is the old one")

    async def run() -> Rekeyed:
        etcd = Etcd.of(args.store, args.store_timeout)
        try:
            return await rekey(etcd, args.store.prefix, old, new[0])
        finally:
            await etcd.close()

    try:
        done = asyncio.run(run())
    except StoreUnavailable as exc:
        raise CommandFailed(f"{args.store}: {exc}") from None
    except StateError as exc:
        raise CommandFailed(f"{args.store}: {exc}; nothing was changed") from None
    names, already, revision = done.names, done.already, done.revision
    if args.output == "json":
        print_json({"rekeyed": list(names), "already": list(already), "revision": revision})
    elif names:
        print(
            f"re-sealed {len(names)} value(s) ({', '.join(names)}) with the key in "
            f"{args.new_kek_file} at etcd revision {revision}; the old key opens nothing now"
        )
    else:
        print(f"unchanged: every sealed value ({', '.join(already)}) has the new key already")
    return 0
