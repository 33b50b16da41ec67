"""A stand-in corporate identity provider for the demo: one ES256 key, its JWKS, tokens."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DemoIdp:
    """A stand-in identity provider: one ES256 key, its JWKS, and tokens it signs."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        numbers = self.key.public_key().public_numbers()
        x, y = (_b64(n.to_bytes(32, "big")) for n in (numbers.x, numbers.y))
        return json.dumps(
            {"keys": [{"kty": "EC", "crv": "P-256", "kid": "demo", "alg": "ES256", "x": x, "y": y}]}
        )

    def claims(self, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer, "aud": "backend", "iat": now, "exp": now + 600, **extra}

    def token(self, claims: dict[str, Any], forged: bool = False) -> str:
        header = {"alg": "ES256", "kid": "demo", "typ": "JWT"}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        key = ec.generate_private_key(ec.SECP256R1()) if forged else self.key
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
