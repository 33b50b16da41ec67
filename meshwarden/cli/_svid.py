"""`meshwarden svid fetch`: what a workload running here gets from the Workload API (uses the
py-spiffe client, exactly as a Python workload would)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from meshwarden.cli._common import CommandFailed, add_output_format
from meshwarden.cli._types import DURATION_EXAMPLES, positive_duration

EXAMPLES = """\
examples:
  meshwarden svid fetch --socket /run/meshwarden/agent.sock
  meshwarden svid fetch --socket /run/meshwarden/agent.sock --jwt-audience backend -o json"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "svid", help="inspect SVIDs from the Workload API", epilog=EXAMPLES
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="fetch this process's SVIDs",
        epilog=EXAMPLES,
        description="Fetch the X.509-SVIDs (and with --jwt-audience a JWT-SVID) that the "
        "Workload API gives this process, with the py-spiffe client a Python workload uses.",
    )
    fetch.add_argument(
        "--socket", type=Path, required=True, metavar="PATH", help="the agent's Workload API socket"
    )
    fetch.add_argument("--jwt-audience", metavar="AUD", help="also fetch a JWT-SVID for AUD")
    add_output_format(fetch)
    fetch.add_argument(
        "--timeout",
        type=positive_duration,
        default="10s",
        metavar="DURATION",
        help=f"give up after DURATION ({DURATION_EXAMPLES})",
    )
    fetch.set_defaults(func=run_fetch)


def _fetch(args: argparse.Namespace) -> dict[str, Any]:
    from cryptography.hazmat.primitives.serialization import Encoding
    from spiffe import WorkloadApiClient

    with WorkloadApiClient(f"unix://{args.socket.resolve()}") as client:
        context = client.fetch_x509_context(timeout=args.timeout)
        svids = [
            {
                "spiffeId": str(svid.spiffe_id),
                "expiresAt": svid.leaf.not_valid_after_utc.isoformat(),
                "chain": [c.public_bytes(Encoding.PEM).decode() for c in svid.cert_chain],
            }
            for svid in context.x509_svids
        ]
        result: dict[str, Any] = {"x509Svids": svids}
        if args.jwt_audience:
            jwt = client.fetch_jwt_svid(audience={args.jwt_audience}, timeout=args.timeout)
            result["jwtSvid"] = {"spiffeId": str(jwt.spiffe_id), "token": jwt.token}
    return result


def _no_identity_hint(message: str) -> str:
    """Why the agent issued nothing to this process, when that is what it said: a Workload
    matches a caller by its `unix:` selectors, and none named this process's ids."""
    if "no identity issued" not in message:
        return ""
    return (
        f"; no Workload's unix: selectors match this process (uid {os.getuid()}, gid "
        f"{os.getgid()}): run it as the workload's user"
    )


def run_fetch(args: argparse.Namespace) -> int:
    from spiffe.errors import PySpiffeError

    try:
        result = _fetch(args)
    except PySpiffeError as exc:
        raise CommandFailed(f"{args.socket}: {exc}{_no_identity_hint(str(exc))}") from None
    if args.output == "json":
        print(json.dumps(result, indent=2))
        return 0
    for index, svid in enumerate(result["x509Svids"]):
        default = " (default)" if index == 0 else ""
        print(f"X.509-SVID {svid['spiffeId']}{default}, expires {svid['expiresAt']}")
    if "jwtSvid" in result:
        print(f"JWT-SVID {result['jwtSvid']['spiffeId']}: {result['jwtSvid']['token']}")
    return 0
