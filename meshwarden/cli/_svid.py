"""`meshwarden svid fetch`: what a workload running here gets from the Workload API (uses the
py-spiffe client, exactly as a Python workload would)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import WorkloadApiClient
from spiffe.errors import PySpiffeError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("svid", help="inspect SVIDs from the Workload API")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = actions.add_parser("fetch", help="fetch this process's SVIDs")
    fetch.add_argument("--socket", type=Path, required=True, metavar="PATH")
    fetch.add_argument("--jwt-audience", metavar="AUD", help="also fetch a JWT-SVID for AUD")
    fetch.add_argument("-o", "--output", choices=("text", "json"), default="text")
    fetch.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    fetch.set_defaults(func=run_fetch)


def _fetch(args: argparse.Namespace) -> dict[str, Any]:
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


def run_fetch(args: argparse.Namespace) -> int:
    try:
        result = _fetch(args)
    except PySpiffeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(result, indent=2))
        return 0
    for index, svid in enumerate(result["x509Svids"]):
        default = " (default)" if index == 0 else ""
        print(f"X.509-SVID {svid['spiffeId']}{default}, expires {svid['expiresAt']}")
    if "jwtSvid" in result:
        print(f"JWT-SVID {result['jwtSvid']['spiffeId']}: {result['jwtSvid']['token']}")
    return 0
