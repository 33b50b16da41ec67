"""`meshwarden ca bundle`: the trust bundle of a server's data dir (PEM or SPIFFE JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshwarden.cli._common import CommandFailed, InputError, write_output_file
from meshwarden.cli._store import store_url

# A SPIFFE bundle file does not name its trust domain; only its certificates are used here.
_UNNAMED = "unnamed.invalid"

EXAMPLES = """\
examples:
  meshwarden ca bundle --data-dir /var/lib/meshwarden > bundle.pem
  meshwarden ca bundle --data-dir data/ --format spiffe --output-file bundle.json
  meshwarden ca bundle --store etcd://10.0.0.1:2379,10.0.0.2:2379 > bundle.pem"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("ca", help="the certificate authority", epilog=EXAMPLES)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    bundle = actions.add_parser("bundle", help="print or write the trust bundle", epilog=EXAMPLES)
    source = bundle.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", type=Path, metavar="DIR", help="the server's --data-dir")
    source.add_argument(
        "--store",
        type=store_url,
        metavar="URL",
        help="the replicas' shared store, etcd://HOST:PORT,... (the bundle is "
        "public there; no key is needed)",
    )
    bundle.add_argument(
        "--format",
        choices=("pem", "spiffe"),
        default="pem",
        help="PEM certificates or a SPIFFE bundle (JSON)",
    )
    bundle.add_argument(
        "--output-file",
        type=Path,
        metavar="FILE",
        help="write the bundle to FILE instead of stdout",
    )
    bundle.set_defaults(func=run_bundle)


def run_bundle(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `meshwarden --help` should not load the control plane.
    from meshwarden._server import BUNDLE_FILE
    from meshwarden.engine import TrustDomain
    from meshwarden.identities import BundleError, TrustBundle

    path = args.data_dir / BUNDLE_FILE if args.data_dir else None
    try:
        text = path.read_text() if path else _store_bundle(args.store)
        bundle = TrustBundle.parse_spiffe_json(text, TrustDomain(_UNNAMED))
    except (OSError, ValueError, BundleError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        hint = "has `meshwarden server` run with this data dir?"
        if path is None:
            raise InputError(f"{args.store}: the bundle in the store: {reason}") from None
        raise InputError(f"{path}: {reason} ({hint})") from None
    data = bundle.x509_pem() if args.format == "pem" else text.encode()
    if args.output_file:
        write_output_file(args.output_file, data)
    else:
        sys.stdout.buffer.write(data)
    return 0


def _store_bundle(url: object) -> str:
    """The SPIFFE bundle the replicas publish in the store."""
    import asyncio

    from meshwarden._etcd import Etcd, StoreUnavailable

    async def read() -> str:
        etcd = Etcd.of(url)  # type: ignore[arg-type]
        try:
            found, _ = await etcd.get(f"{url.prefix}bundle".encode())  # type: ignore[attr-defined]
        finally:
            await etcd.close()
        if found is None:
            raise ValueError("no bundle yet (has a `meshwarden server --store` replica run?)")
        return found.value.decode()

    try:
        return asyncio.run(read())
    except StoreUnavailable as exc:
        raise CommandFailed(f"{url}: {exc}") from None
