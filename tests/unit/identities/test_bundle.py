"""SPIFFE bundle format: JWKS with x509-svid / jwt-svid keys, sequence and refresh hint."""

from __future__ import annotations

import base64
import json

from cryptography import x509
from meshwarden.identities import CertificateAuthority, TrustBundle
from spiffe import JwtBundle
from spiffe import TrustDomain as PySpiffeTrustDomain

from .conftest import TD


def test_spiffe_bundle_has_x509_and_jwt_keys_with_sequence_and_refresh_hint(
    ca: CertificateAuthority,
) -> None:
    document = json.loads(ca.bundle().to_spiffe_json())
    assert document["spiffe_sequence"] == 1 and document["spiffe_refresh_hint"] == 300
    uses = sorted(key["use"] for key in document["keys"])
    assert uses == ["jwt-svid", "x509-svid"]


def test_x509_entry_has_one_x5c_certificate_and_no_kid(ca: CertificateAuthority) -> None:
    (entry,) = [
        k for k in json.loads(ca.bundle().to_spiffe_json())["keys"] if k["use"] == "x509-svid"
    ]
    assert "kid" not in entry and len(entry["x5c"]) == 1
    cert = x509.load_der_x509_certificate(base64.b64decode(entry["x5c"][0]))
    assert cert == ca.x509.active().certificate


def test_jwt_entry_has_the_signing_kid(ca: CertificateAuthority) -> None:
    (entry,) = [
        k for k in json.loads(ca.bundle().to_spiffe_json())["keys"] if k["use"] == "jwt-svid"
    ]
    assert entry["kid"] == ca.jwt.active().kid and entry["crv"] == "P-256"


def test_spiffe_bundle_round_trips(ca: CertificateAuthority) -> None:
    parsed = TrustBundle.parse_spiffe_json(ca.bundle().to_spiffe_json(), TD)
    assert parsed == ca.bundle()


def test_workload_api_jwks_has_kid_and_no_use_and_py_spiffe_parses_it(
    ca: CertificateAuthority,
) -> None:
    jwks = ca.bundle().standard_jwks_json()
    (key,) = json.loads(jwks)["keys"]
    assert key["kid"] == ca.jwt.active().kid and "use" not in key
    bundle = JwtBundle.parse(PySpiffeTrustDomain("example.org"), jwks)
    assert bundle.get_jwt_authority(key["kid"]) is not None
