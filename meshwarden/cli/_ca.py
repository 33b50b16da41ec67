"""`meshwarden ca bundle`: the trust bundle of a server's data dir (PEM or SPIFFE JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshwarden._server import BUNDLE_FILE
from meshwarden.engine import TrustDomain
from meshwarden.identities import BundleError, TrustBundle

_UNNAMED = TrustDomain("unnamed.invalid")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("ca", help="the certificate authority")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    bundle = actions.add_parser("bundle", help="print or write the trust bundle")
    bundle.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    bundle.add_argument("--format", choices=("pem", "spiffe"), default="pem")
    bundle.add_argument("-o", "--output", type=Path, metavar="FILE")
    bundle.set_defaults(func=run_bundle)


def run_bundle(args: argparse.Namespace) -> int:
    path = args.data_dir / BUNDLE_FILE
    try:
        text = path.read_text()
        # A SPIFFE bundle does not name its trust domain; only its certificates are used here.
        bundle = TrustBundle.parse_spiffe_json(text, _UNNAMED)
    except (OSError, ValueError, BundleError) as exc:
        hint = "has `meshwarden server` run with this data dir?"
        print(f"error: {path}: {exc} ({hint})", file=sys.stderr)
        return 1
    data = bundle.x509_pem() if args.format == "pem" else text.encode()
    if args.output:
        args.output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0
