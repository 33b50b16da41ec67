"""JWT-SVIDs: ES256 with kid, sub, aud list, exp, iat, typ JWT; the verifier raises on defects."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    ManualClock,
    SvidValidationError,
    verify_jwt_svid,
)
from meshwarden.identities._keys import b64url, b64url_decode
from spiffe import JwtBundle
from spiffe import JwtSvid as PySpiffeJwtSvid
from spiffe import TrustDomain as PySpiffeTrustDomain

from .conftest import TD, WORKLOAD_ID


def _parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    header, claims, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(claims))


def test_jwt_svid_header_has_es256_kid_and_typ(ca: CertificateAuthority) -> None:
    header, _ = _parts(ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token)
    assert header == {"alg": "ES256", "kid": ca.jwt.active().kid, "typ": "JWT"}


def test_jwt_svid_claims_are_sub_aud_list_exp_iat(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    _, claims = _parts(ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token)
    now = int(clock.now().timestamp())
    assert claims == {"sub": str(WORKLOAD_ID), "aud": ["backend"], "iat": now, "exp": now + 300}


def test_jwt_svid_verifies_against_the_bundle(ca: CertificateAuthority, clock: ManualClock) -> None:
    token = ca.sign_jwt_svid(WORKLOAD_ID, ["backend", "other"]).token
    svid = verify_jwt_svid(token, ca.bundle(), "other", clock.now())
    assert svid.spiffe_id == WORKLOAD_ID and svid.audience == ("backend", "other")


def test_py_spiffe_validates_our_token_with_our_jwks() -> None:
    ca = CertificateAuthority(CaConfig(TD), ManualClock(dt.datetime.now(dt.UTC)))
    token = ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token
    bundle = JwtBundle.parse(PySpiffeTrustDomain("example.org"), ca.bundle().standard_jwks_json())
    parsed = PySpiffeJwtSvid.parse_and_validate(token, bundle, {"backend"})
    assert str(parsed.spiffe_id) == str(WORKLOAD_ID)


def test_verifier_rejects_jwt_svid_wrong_audience(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    token = ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token
    with pytest.raises(SvidValidationError, match="does not include 'frontend'"):
        verify_jwt_svid(token, ca.bundle(), "frontend", clock.now())


def test_verifier_rejects_jwt_svid_expired(ca: CertificateAuthority, clock: ManualClock) -> None:
    token = ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token
    with pytest.raises(SvidValidationError, match="expired"):
        verify_jwt_svid(token, ca.bundle(), "backend", clock.now() + dt.timedelta(minutes=6))


def test_verifier_rejects_jwt_svid_with_tampered_claims(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    header, _, signature = ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token.split(".")
    _, claims = _parts(ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token)
    claims["sub"] = "spiffe://example.org/ns/shop/sa/admin"
    forged = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(SvidValidationError, match="signature does not verify"):
        verify_jwt_svid(forged, ca.bundle(), "backend", clock.now())


def test_verifier_rejects_jwt_svid_alg_none(ca: CertificateAuthority, clock: ManualClock) -> None:
    _, claims, _ = ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token.split(".")
    header = b64url(json.dumps({"alg": "none", "kid": "x"}).encode())
    with pytest.raises(SvidValidationError, match="alg 'none'"):
        verify_jwt_svid(f"{header}.{claims}.", ca.bundle(), "backend", clock.now())


def test_verifier_rejects_jwt_svid_without_kid(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    _, claims, signature = ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token.split(".")
    header = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    with pytest.raises(SvidValidationError, match="no 'kid'"):
        verify_jwt_svid(f"{header}.{claims}.{signature}", ca.bundle(), "backend", clock.now())


def test_verifier_rejects_jwt_svid_signed_by_another_ca(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    stranger = CertificateAuthority(CaConfig(TD), clock)
    token = stranger.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token
    with pytest.raises(SvidValidationError, match="no JWT key with kid"):
        verify_jwt_svid(token, ca.bundle(), "backend", clock.now())


def test_jwt_svid_needs_an_audience(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="audience"):
        ca.sign_jwt_svid(WORKLOAD_ID, [])
