"""The node SVIDs this server issued through attestation (a join token, then renewals).

The node API accepts a client certificate as a node's only when it is one of these — not any
certificate the CA (or an upstream CA) signed with a node-looking SPIFFE ID. Each record is the
SHA-256 fingerprint of the certificate with its node name and expiry, kept in the data dir (0600)
so a restarted server still knows its nodes; expired records are dropped on every write.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from meshwarden.identities._clock import Clock
from meshwarden.identities._errors import AttestationError, StateError
from meshwarden.identities._files import write_file

FORMAT_VERSION = 1


def fingerprint(certificate: x509.Certificate) -> str:
    """The SHA-256 of the certificate's DER, hex: the key a node SVID is recorded under."""
    return certificate.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class _Issued:
    node: str
    not_after: dt.datetime


class IssuedNodes:
    """The record of node SVIDs issued through attestation, saved at `path` on every change."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self._clock = clock
        self._issued: dict[str, _Issued] = {}

    @classmethod
    def load(cls, path: Path, clock: Clock) -> IssuedNodes:
        """The record saved at `path` (empty when there is none); StateError naming the file
        when it cannot be read."""
        nodes = cls(path, clock)
        if path.exists():
            nodes._issued = _parse(path)
        return nodes

    def __len__(self) -> int:
        return len(self._issued)

    def add(self, certificate: x509.Certificate, node: str) -> None:
        now = self._clock.now()
        kept = {k: v for k, v in self._issued.items() if v.not_after > now}
        kept[fingerprint(certificate)] = _Issued(node, certificate.not_valid_after_utc)
        self._issued = kept
        self._save()

    async def record(self, certificate: x509.Certificate, node: str) -> None:
        """`add`, as the node API calls it (a shared store's records are written remotely)."""
        self.add(certificate, node)

    async def lookup(self, certificate: x509.Certificate) -> str:
        """`node_of`, as the node API calls it."""
        return self.node_of(certificate)

    def node_of(self, certificate: x509.Certificate) -> str:
        """The node `certificate` was issued to; AttestationError if this server never issued
        it as a node SVID."""
        issued = self._issued.get(fingerprint(certificate))
        if issued is None:
            raise AttestationError(
                "the client certificate is not a node SVID issued by attestation; "
                "attest with a join token"
            )
        return issued.node

    def _save(self) -> None:
        document = {
            "format": FORMAT_VERSION,
            "nodes": {
                k: {"node": v.node, "not_after": v.not_after.isoformat()}
                for k, v in sorted(self._issued.items())
            },
        }
        write_file(self.path, json.dumps(document, indent=1).encode())


def _parse(path: Path) -> dict[str, _Issued]:
    try:
        document = json.loads(path.read_bytes())
        if document.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown format {document.get('format')!r}")
        return {
            str(k): _Issued(str(v["node"]), dt.datetime.fromisoformat(v["not_after"]))
            for k, v in document["nodes"].items()
        }
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{path}: not valid JSON at line {exc.lineno} col {exc.colno}; restore it from a "
            "backup, or remove it and attest every node again with a new join token"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise StateError(
            f"{path}: not a record of issued node SVIDs ({type(exc).__name__}: {exc}); restore "
            "it from a backup, or remove it and attest every node again with a new join token"
        ) from None
