"""SPIFFE trust bundles (SPIFFE Trust Domain and Bundle spec §4): a JWK Set with `x509-svid`
entries (one self-signed CA certificate in `x5c`, no `kid`) and `jwt-svid` entries (`kid` set),
plus `spiffe_sequence` and `spiffe_refresh_hint`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from meshwarden.engine import TrustDomain
from meshwarden.identities._errors import BundleError
from meshwarden.identities._keys import PublicKey, public_jwk, public_key_from_jwk

USE_X509 = "x509-svid"
USE_JWT = "jwt-svid"


@dataclass(frozen=True)
class JwtKey:
    """A JWT signing authority's public key and key ID, as published in the bundle."""

    kid: str
    public_key: PublicKey


@dataclass(frozen=True)
class TrustBundle:
    """A trust domain's X.509 authorities and JWT keys, with a sequence number."""

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...]
    jwt_keys: tuple[JwtKey, ...]
    sequence: int = 1
    refresh_hint_seconds: int = 300

    def x509_der(self) -> bytes:
        """Concatenated DER: the Workload API's `bundle` bytes."""
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.x509_authorities)

    def x509_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)

    def jwt_key(self, kid: str) -> PublicKey:
        for key in self.jwt_keys:
            if key.kid == kid:
                return key.public_key
        raise BundleError(f"no JWT key with kid {kid!r} in the bundle of {self.trust_domain}")

    def to_spiffe_json(self) -> str:
        keys: list[dict[str, object]] = [_x509_jwk(c) for c in self.x509_authorities]
        keys += [{"use": USE_JWT, "kid": k.kid, **public_jwk(k.public_key)} for k in self.jwt_keys]
        document = {
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint_seconds,
        }
        return json.dumps(document, indent=2)

    def standard_jwks_json(self) -> bytes:
        """JWT keys only, no `use` (what SPIRE's FetchJWTBundles returns; py-spiffe needs `kid`)."""
        keys = [{"kid": k.kid, **public_jwk(k.public_key)} for k in self.jwt_keys]
        return json.dumps({"keys": keys}).encode()

    @classmethod
    def parse_spiffe_json(cls, text: str | bytes, trust_domain: TrustDomain) -> TrustBundle:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise BundleError(f"bundle of {trust_domain} is not JSON: {exc}") from exc
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise BundleError(f"bundle of {trust_domain} has no 'keys' list")
        authorities, jwt_keys = _parse_keys(document["keys"], trust_domain)
        return cls(
            trust_domain=trust_domain,
            x509_authorities=authorities,
            jwt_keys=jwt_keys,
            sequence=int(document.get("spiffe_sequence", 0)),
            refresh_hint_seconds=int(document.get("spiffe_refresh_hint", 300)),
        )


def _x509_jwk(certificate: x509.Certificate) -> dict[str, object]:
    der = certificate.public_bytes(serialization.Encoding.DER)
    jwk: dict[str, object] = {"use": USE_X509, **public_jwk(_ec_key(certificate))}
    jwk["x5c"] = [base64.b64encode(der).decode("ascii")]
    return jwk


def _ec_key(certificate: x509.Certificate) -> PublicKey:
    key = certificate.public_key()
    if not isinstance(key, PublicKey):
        raise BundleError(f"CA certificate {certificate.subject.rfc4514_string()} is not EC P-256")
    return key


def _parse_keys(
    keys: list[object], trust_domain: TrustDomain
) -> tuple[tuple[x509.Certificate, ...], tuple[JwtKey, ...]]:
    authorities: list[x509.Certificate] = []
    jwt_keys: list[JwtKey] = []
    for index, jwk in enumerate(keys):
        if not isinstance(jwk, dict):
            raise BundleError(f"bundle of {trust_domain}: keys[{index}] is not an object")
        try:
            if jwk.get("use") == USE_X509 and jwk.get("x5c"):
                der = base64.b64decode(jwk["x5c"][0])
                authorities.append(x509.load_der_x509_certificate(der))
            elif jwk.get("use") == USE_JWT:
                if not jwk.get("kid"):
                    raise BundleError("a jwt-svid key must have a 'kid'")
                jwt_keys.append(JwtKey(str(jwk["kid"]), public_key_from_jwk(jwk)))
        except (ValueError, TypeError, KeyError) as exc:
            raise BundleError(f"bundle of {trust_domain}: keys[{index}]: {exc}") from exc
    return tuple(authorities), tuple(jwt_keys)
