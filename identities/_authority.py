"""Signing authorities: X.509 CAs (self-signed or under an upstream CA) and JWT signing keys.

This is the signer of the CA split: it turns a template into a signed certificate. What goes into a
certificate is in `_templates`, when an authority is used in `_rotation`, and checks in `_validate`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from meshwarden.engine import TrustDomain
from meshwarden.identities._keys import (
    PrivateKey,
    generate_key,
    jwk_thumbprint,
    load_private_key_pem,
)
from meshwarden.identities._templates import NOT_BEFORE_BACKDATE, ca_template


def sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    return builder.sign(key, hashes.SHA256())


@dataclass(frozen=True)
class UpstreamCa:
    """A user's CA that signs our intermediates. `chain[0]` signs; the rest lead to a root."""

    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> UpstreamCa:
        chain = tuple(x509.load_pem_x509_certificates(cert_file.read_bytes()))
        key = load_private_key_pem(key_file.read_bytes(), str(key_file))
        if chain[0].public_key() != key.public_key():
            raise ValueError(f"{key_file}: key does not match the first certificate of {cert_file}")
        return cls(key=key, chain=chain)

    def roots(self) -> tuple[x509.Certificate, ...]:
        """The certificates a bundle should carry: self-signed ones, else the last one."""
        roots = tuple(c for c in self.chain if c.issuer == c.subject)
        return roots or self.chain[-1:]

    def intermediates(self) -> tuple[x509.Certificate, ...]:
        roots = self.roots()
        return tuple(c for c in self.chain if c not in roots)


@dataclass(frozen=True)
class X509Authority:
    """A CA certificate with its key; `chain` is what follows it in an SVID chain (upstream
    intermediates, never the bundle root)."""

    certificate: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def is_self_signed(self) -> bool:
        return self.certificate.issuer == self.certificate.subject


def mint_x509_authority(
    trust_domain: TrustDomain,
    now: dt.datetime,
    ttl: dt.timedelta,
    upstream: UpstreamCa | None = None,
) -> X509Authority:
    key = generate_key()
    serial = x509.random_serial_number()
    not_after = now + ttl
    if upstream is not None:
        not_after = min(not_after, upstream.chain[0].not_valid_after_utc)
    builder = ca_template(
        public_key=key.public_key(),
        trust_domain=trust_domain,
        serial=serial,
        issuer=upstream.chain[0].subject if upstream else None,
        issuer_key=(upstream.key if upstream else key).public_key(),
        not_before=now - NOT_BEFORE_BACKDATE,
        not_after=not_after,
    )
    if upstream is None:
        return X509Authority(certificate=sign(builder, key), key=key)
    certificate = sign(builder, upstream.key)
    return X509Authority(certificate=certificate, key=key, chain=upstream.intermediates())


@dataclass(frozen=True)
class JwtAuthority:
    """A JWT-SVID signing key; `kid` is its RFC 7638 thumbprint."""

    key: PrivateKey
    kid: str
    not_before: dt.datetime
    not_after: dt.datetime


def mint_jwt_authority(now: dt.datetime, ttl: dt.timedelta) -> JwtAuthority:
    key = generate_key()
    return JwtAuthority(
        key=key, kid=jwk_thumbprint(key.public_key()), not_before=now, not_after=now + ttl
    )
