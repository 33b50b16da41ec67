"""`meshwarden token create`: a single-use join token, from a running server's admin socket."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from meshwarden.cli._common import CommandFailed, InputError
from meshwarden.cli._store import store_url
from meshwarden.cli._types import DURATION_EXAMPLES, positive_duration

EXAMPLES = """\
examples:
  meshwarden token create --data-dir /var/lib/meshwarden --node web-1
  meshwarden token create --data-dir data/ --node db-1 --ttl 1h
  meshwarden token create --store etcd://10.0.0.1:2379,10.0.0.2:2379 --node web-1"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("token", help="join tokens for agents", epilog=EXAMPLES)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="print a new single-use join token", epilog=EXAMPLES)
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="the running server's --data-dir (its admin socket is there)",
    )
    source.add_argument(
        "--store",
        type=store_url,
        metavar="URL",
        help="the replicas' shared store, etcd://HOST:PORT,...: the token is "
        "written there and any replica redeems it, once",
    )
    create.add_argument("--node", required=True, metavar="NAME", help="the node the token is for")
    create.add_argument(
        "--ttl",
        type=positive_duration,
        default="10m",
        metavar="DURATION",
        help=f"the token expires after DURATION ({DURATION_EXAMPLES})",
    )
    create.set_defaults(func=run_create)


def run_create(args: argparse.Namespace) -> int:
    from meshwarden._admin import admin_request  # not at the top: keeps --help fast

    if args.store is not None:
        print(_create_in_store(args))
        return 0
    request = {"op": "token.create", "node": args.node, "ttl_seconds": args.ttl}
    try:
        reply = asyncio.run(admin_request(args.data_dir, request))
    except OSError as exc:
        reason = exc.strerror or exc
        raise CommandFailed(
            f"no server running with --data-dir {args.data_dir}: {reason}"
        ) from None
    if "error" in reply:
        raise CommandFailed(str(reply["error"]))
    print(reply["token"])
    return 0


def _create_in_store(args: argparse.Namespace) -> str:
    import datetime as dt

    from meshwarden._etcd import Etcd, StoreUnavailable
    from meshwarden._shared_nodes import SharedTokens
    from meshwarden.identities import SystemClock

    async def create() -> str:
        etcd = Etcd.of(args.store)
        try:
            tokens = SharedTokens(etcd, args.store.prefix, SystemClock())
            return await tokens.create(args.node, dt.timedelta(seconds=args.ttl))
        finally:
            await etcd.close()

    try:
        return asyncio.run(create())
    except ValueError as exc:
        raise InputError(str(exc)) from None
    except StoreUnavailable as exc:
        raise CommandFailed(f"{args.store}: {exc}") from None
