"""Persistence of a CA's authorities (keys included) in the server's data dir, mode 0600, so a
restarted server keeps its trust bundle and agents keep trusting it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.identities._authority import JwtAuthority, X509Authority
from meshwarden.identities._ca import CaConfig, CertificateAuthority
from meshwarden.identities._clock import Clock
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


def save_ca(ca: CertificateAuthority, path: Path) -> None:
    """Write the CA's authorities and keys to `path` (0600)."""
    document = {
        "format": FORMAT_VERSION,
        "trust_domain": ca.trust_domain.name,
        "sequence": ca.sequence,
        "x509": [_x509_slot(s) for s in ca.x509.slots],
        "jwt": [_jwt_slot(s) for s in ca.jwt.slots],
    }
    write_file(path, json.dumps(document, indent=1).encode())


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


def load_ca(path: Path, config: CaConfig, clock: Clock) -> CertificateAuthority:
    """The CA saved at `path`, or a new one when there is none. A saved CA of another trust
    domain is an error: silently replacing it would break every agent's trust."""
    if not path.exists():
        return CertificateAuthority(config, clock)
    document = json.loads(path.read_text())
    if document.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unknown CA state format {document.get('format')!r}")
    if document["trust_domain"] != config.trust_domain.name:
        raise ValueError(
            f"{path}: CA is for trust domain {document['trust_domain']!r}, the policies say "
            f"{config.trust_domain.name!r}; use another --data-dir or remove the CA state"
        )
    return CertificateAuthority(
        config,
        clock,
        x509_slots=tuple(_load_x509(i, str(path)) for i in document["x509"]),
        jwt_slots=tuple(_load_jwt(i, str(path)) for i in document["jwt"]),
        sequence=int(document["sequence"]) - 1,
    )
