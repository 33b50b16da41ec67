"""`meshwarden token create`: a single-use join token, from a running server's admin socket."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

from meshwarden._server import admin_request

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    match = _DURATION.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m, 2h or 1d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("token", help="join tokens for agents")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="print a new single-use join token")
    create.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    create.add_argument("--node", required=True, metavar="NAME")
    create.add_argument("--ttl", type=parse_duration, default=600.0, metavar="DURATION")
    create.set_defaults(func=run_create)


def run_create(args: argparse.Namespace) -> int:
    request = {"op": "token.create", "node": args.node, "ttl_seconds": args.ttl}
    try:
        reply = asyncio.run(admin_request(args.data_dir, request))
    except OSError as exc:
        print(f"error: no server running with --data-dir {args.data_dir}: {exc}", file=sys.stderr)
        return 1
    if "error" in reply:
        print(f"error: {reply['error']}", file=sys.stderr)
        return 1
    print(reply["token"])
    return 0
