"""JWT-SVIDs (SPIFFE JWT-SVID spec): ES256, JWS compact serialization, header `alg`, `kid`,
`typ: JWT`; claims `sub`, `aud` (always a list), `exp`, `iat`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from meshwarden.engine import SpiffeId, SpiffeIdError
from meshwarden.identities._authority import JwtAuthority
from meshwarden.identities._bundle import TrustBundle
from meshwarden.identities._errors import BundleError, SvidValidationError
from meshwarden.identities._keys import b64url, b64url_decode

_ALLOWED_HEADER = {"alg", "kid", "typ"}


@dataclass(frozen=True)
class JwtSvid:
    """A signed JWT-SVID with its subject, audience, expiry and claims."""

    token: str
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expires_at: dt.datetime
    claims: dict[str, Any] = field(default_factory=dict, compare=False)


def _segment(document: dict[str, Any]) -> str:
    return str(b64url(json.dumps(document, separators=(",", ":")).encode()))


def encode_jwt_svid(
    authority: JwtAuthority,
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    issued_at: dt.datetime,
    expires_at: dt.datetime,
) -> JwtSvid:
    if not audience or any(not a for a in audience):
        raise ValueError("a JWT-SVID needs at least one non-empty audience")
    header = {"alg": "ES256", "kid": authority.kid, "typ": "JWT"}
    claims = {
        "sub": str(spiffe_id),
        "aud": list(audience),
        "exp": int(expires_at.timestamp()),
        "iat": int(issued_at.timestamp()),
    }
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    der = authority.key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    expiry = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)  # type: ignore[arg-type]
    token = f"{signing_input}.{signature}"
    return JwtSvid(token, spiffe_id, tuple(audience), expiry, claims)


def _decode_json(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(segment))
    except ValueError as exc:
        raise SvidValidationError(f"JWT-SVID {what} is not base64url JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SvidValidationError(f"JWT-SVID {what} is not a JSON object")
    return value


def _check_header(header: dict[str, Any]) -> str:
    if header.get("alg") != "ES256":
        raise SvidValidationError(f"JWT-SVID alg {header.get('alg')!r} is not supported (ES256)")
    if header.get("typ", "JWT") not in ("JWT", "JOSE"):
        raise SvidValidationError(f"JWT-SVID typ {header.get('typ')!r} is not JWT or JOSE")
    extra = set(header) - _ALLOWED_HEADER
    if extra:
        raise SvidValidationError(f"JWT-SVID header has members not allowed: {sorted(extra)}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SvidValidationError("JWT-SVID header has no 'kid'")
    return kid


def _check_claims(claims: dict[str, Any], audience: str, now: dt.datetime) -> SpiffeId:
    try:
        spiffe_id = SpiffeId.parse(claims.get("sub", ""))
    except SpiffeIdError as exc:
        raise SvidValidationError(f"JWT-SVID 'sub' is not a SPIFFE ID: {exc}") from exc
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not audiences:
        raise SvidValidationError("JWT-SVID has no 'aud'")
    if audience not in audiences:
        raise SvidValidationError(f"JWT-SVID audience {audiences} does not include {audience!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise SvidValidationError("JWT-SVID has no numeric 'exp'")
    if exp <= now.timestamp():
        raise SvidValidationError(f"JWT-SVID expired at {dt.datetime.fromtimestamp(exp, dt.UTC)}")
    return spiffe_id


def _check_signature(signing_input: str, signature: str, key: ec.EllipticCurvePublicKey) -> None:
    raw = b64url_decode(signature)
    if len(raw) != 64:
        raise SvidValidationError("JWT-SVID ES256 signature must be 64 bytes")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        key.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SvidValidationError("JWT-SVID signature does not verify") from exc


def verify_jwt_svid(token: str, bundle: TrustBundle, audience: str, now: dt.datetime) -> JwtSvid:
    """Verify `token` against the bundle of its `sub` trust domain; raise on any defect."""
    parts = token.split(".")
    if len(parts) != 3:
        raise SvidValidationError("JWT-SVID is not in JWS compact serialization (3 parts)")
    kid = _check_header(_decode_json(parts[0], "header"))
    claims = _decode_json(parts[1], "claims")
    spiffe_id = _check_claims(claims, audience, now)
    if spiffe_id.trust_domain != bundle.trust_domain:
        raise SvidValidationError(
            f"JWT-SVID is for trust domain {spiffe_id.trust_domain}, "
            f"the bundle is of {bundle.trust_domain}"
        )
    try:
        key = bundle.jwt_key(kid)
    except BundleError as exc:
        raise SvidValidationError(str(exc)) from exc
    _check_signature(f"{parts[0]}.{parts[1]}", parts[2], key)
    aud = claims["aud"]
    expiry = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
    return JwtSvid(token, spiffe_id, tuple([aud] if isinstance(aud, str) else aud), expiry, claims)
