"""`meshwarden token create`: a single-use join token, from a running server's admin socket."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from meshwarden.cli._common import CommandFailed
from meshwarden.cli._types import DURATION_EXAMPLES, positive_duration

EXAMPLES = """\
examples:
  meshwarden token create --data-dir /var/lib/meshwarden --node web-1
  meshwarden token create --data-dir data/ --node db-1 --ttl 1h"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("token", help="join tokens for agents", epilog=EXAMPLES)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="print a new single-use join token", epilog=EXAMPLES)
    create.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="the running server's --data-dir (its admin socket is there)",
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
    from meshwarden._server import admin_request  # not at the top: keeps --help fast

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
