"""Key generation and encodings (ECDSA P-256 by default, as SPIRE's ec-p256)."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey


def generate_key() -> PrivateKey:
    """A new P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pkcs8_der(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 DER: the form the Workload API carries in `x509_svid_key`."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_pkcs8_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes, source: str) -> PrivateKey:
    """An unencrypted EC private key from PEM; ValueError naming `source` otherwise."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise ValueError(f"{source}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{source}: only EC private keys are supported, got {type(key).__name__}")
    return key


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_JWK_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _coordinate(value: int, size: int) -> str:
    return b64url(value.to_bytes(size, "big"))


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The RFC 7517 JWK members of an EC public key (no `kid`, no `use`)."""
    crv = _JWK_CURVES.get(key.curve.name)
    if crv is None:
        raise ValueError(f"unsupported EC curve {key.curve.name}")
    size = (key.curve.key_size + 7) // 8
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": _coordinate(numbers.x, size),
        "y": _coordinate(numbers.y, size),
    }


def jwk_thumbprint(key: PublicKey) -> str:
    """RFC 7638 thumbprint, used as the `kid` of JWT signing keys (stable, unique per key)."""
    jwk = public_jwk(key)
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode()).digest())


def public_key_from_jwk(jwk: dict[str, object]) -> PublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError(f"unsupported JWK kty/crv {jwk.get('kty')!r}/{jwk.get('crv')!r}")
    x, y = jwk.get("x"), jwk.get("y")
    if not isinstance(x, str) or not isinstance(y, str):
        raise ValueError("EC JWK needs string members 'x' and 'y'")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(b64url_decode(x), "big"),
        int.from_bytes(b64url_decode(y), "big"),
        ec.SECP256R1(),
    )
    return numbers.public_key()
