"""Persistence of a CA's authorities (keys included) in the server's data dir, mode 0600, so a
restarted server keeps its trust bundle and agents keep trusting it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.identities._authority import JwtAuthority, X509Authority
from meshwarden.identities._ca import CaConfig, CertificateAuthority
from meshwarden.identities._clock import Clock
from meshwarden.identities._errors import StateError
from meshwarden.identities._files import write_file
from meshwarden.identities._keys import load_private_key_pem, private_key_pkcs8_pem
from meshwarden.identities._rotation import Slot, SlotState

FORMAT_VERSION = 1


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode("ascii")


def _x509_slot(slot: Slot[X509Authority]) -> dict[str, Any]:
    a = slot.authority
    return {
        "state": slot.state.value,
        "certificate": _pem(a.certificate),
        "key": private_key_pkcs8_pem(a.key).decode("ascii"),
        "chain": [_pem(c) for c in a.chain],
    }


def _jwt_slot(slot: Slot[JwtAuthority]) -> dict[str, Any]:
    a = slot.authority
    return {
        "state": slot.state.value,
        "kid": a.kid,
        "key": private_key_pkcs8_pem(a.key).decode("ascii"),
        "not_before": a.not_before.isoformat(),
        "not_after": a.not_after.isoformat(),
    }


def encode_ca(ca: CertificateAuthority) -> bytes:
    """The CA's authorities and keys as a JSON document (secret: the private keys are in it)."""
    document = {
        "format": FORMAT_VERSION,
        "trust_domain": ca.trust_domain.name,
        "sequence": ca.sequence,
        "x509": [_x509_slot(s) for s in ca.x509.slots],
        "jwt": [_jwt_slot(s) for s in ca.jwt.slots],
    }
    return json.dumps(document, indent=1).encode()


def save_ca(ca: CertificateAuthority, path: Path) -> None:
    """Write the CA's authorities and keys to `path` (0600)."""
    write_file(path, encode_ca(ca))


def decode_ca(data: bytes, config: CaConfig, clock: Clock, source: str) -> CertificateAuthority:
    """The CA of a document `encode_ca` wrote; StateError naming `source` when it is not one.
    Transitions that fell due since it was written are applied (as at any start)."""
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StateError(f"{source}: not valid JSON; {_RESTORE}") from None
    if not isinstance(document, dict) or not document.get("x509"):
        raise StateError(f"{source}: not a CA state document; {_RESTORE}")
    return _from_document(document, config, clock, source)


def _load_x509(item: dict[str, Any], source: str) -> Slot[X509Authority]:
    authority = X509Authority(
        certificate=x509.load_pem_x509_certificate(item["certificate"].encode()),
        key=load_private_key_pem(item["key"].encode(), source),
        chain=tuple(x509.load_pem_x509_certificate(c.encode()) for c in item["chain"]),
    )
    return Slot(authority, SlotState(item["state"]))


def _load_jwt(item: dict[str, Any], source: str) -> Slot[JwtAuthority]:
    authority = JwtAuthority(
        key=load_private_key_pem(item["key"].encode(), source),
        kid=item["kid"],
        not_before=dt.datetime.fromisoformat(item["not_before"]),
        not_after=dt.datetime.fromisoformat(item["not_after"]),
    )
    return Slot(authority, SlotState(item["state"]))


_RESTORE = "restore it from a backup or start with --new-ca"


def _read_document(path: Path) -> dict[str, Any] | None:
    """The JSON document at `path`; None when the file is missing or empty."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror}") from None
    if not text.strip():
        return None
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = (
            f" at line {exc.lineno} col {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise StateError(f"{path}: not valid JSON{where}; {_RESTORE}") from None
    if not isinstance(document, dict):
        raise StateError(f"{path}: not a CA state document; {_RESTORE}")
    return document


def _check_header(document: dict[str, Any], config: CaConfig, path: Path | str) -> None:
    if document.get("format") != FORMAT_VERSION:
        raise StateError(f"{path}: unknown CA state format {document.get('format')!r}; {_RESTORE}")
    if document.get("trust_domain") != config.trust_domain.name:
        raise StateError(
            f"{path}: CA is for trust domain {document.get('trust_domain')!r}, the policies say "
            f"{config.trust_domain.name!r}; use another --data-dir or remove the CA state"
        )


def load_ca(
    path: Path,
    config: CaConfig,
    clock: Clock,
    evidence: Sequence[Path] = (),
    new_ca: bool = False,
) -> CertificateAuthority:
    """The CA saved at `path`. A new CA only when there is no saved one and none of the
    `evidence` files (other state of this server: bundle, issued node SVIDs, server
    certificate) exists — or when `new_ca` says so. Every problem is a StateError naming the file.
    """
    document = None if new_ca else _read_document(path)
    if document is None or not document.get("x509"):
        existing = [str(p) for p in evidence if p.exists()]
        if existing and not new_ca:
            what = "empty" if path.exists() else "missing"
            raise StateError(
                f"{path}: {what} (or holds no CA), but {', '.join(existing)} say a CA existed; "
                f"{_RESTORE} (agents and sidecars then need the new trust bundle)"
            )
        return CertificateAuthority(config, clock)
    return _from_document(document, config, clock, str(path))


def _from_document(
    document: dict[str, Any], config: CaConfig, clock: Clock, source: str
) -> CertificateAuthority:
    _check_header(document, config, source)
    try:
        return CertificateAuthority(
            config,
            clock,
            x509_slots=tuple(_load_x509(i, source) for i in document["x509"]),
            jwt_slots=tuple(_load_jwt(i, source) for i in document.get("jwt", [])),
            sequence=int(document["sequence"]) - 1,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(
            f"{source}: not a usable CA state ({type(exc).__name__}: {exc}); {_RESTORE}"
        ) from None
