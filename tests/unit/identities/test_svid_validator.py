"""The X509-SVID validator raises on every crafted defect; openssl agrees on the PKI ones."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    ManualClock,
    SvidValidationError,
    generate_key,
    verify_x509_svid,
)
from meshwarden.identities._validate import check_minted_x509_svid

from .conftest import TD, WORKLOAD_ID, openssl_verify

Builder = x509.CertificateBuilder
SERVER_AND_CLIENT = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def _usage(digital_signature: bool = True, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature, False, False, False, False, cert_sign, False, False, False
    )


def _uris(*uris: str) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])


def _base(ca: CertificateAuthority, now: dt.datetime, days: float = 1) -> Builder:
    issuer = ca.x509.active().certificate
    key = generate_key().public_key()
    return (
        Builder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crafted")]))
        .issuer_name(issuer.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=days))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.x509.active().key.public_key()),
            critical=False,
        )
    )


def _leaf(
    builder: Builder,
    *,
    san: x509.SubjectAlternativeName | None = None,
    ca_flag: bool = False,
    usage: x509.KeyUsage | None = None,
    usage_critical: bool = True,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> Builder:
    builder = builder.add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), True)
    builder = builder.add_extension(usage or _usage(), critical=usage_critical)
    builder = builder.add_extension(x509.ExtendedKeyUsage(eku or SERVER_AND_CLIENT), False)
    return builder.add_extension(san or _uris(str(WORKLOAD_ID)), critical=False)


Defect = Callable[[Builder], Builder]
DEFECTS: dict[str, tuple[Defect, str]] = {
    "svid_two_uri_sans": (
        lambda b: _leaf(b, san=_uris(str(WORKLOAD_ID), "spiffe://example.org/ns/x/sa/y")),
        "exactly one URI SAN, found 2",
    ),
    "svid_no_uri_san": (
        lambda b: _leaf(b, san=x509.SubjectAlternativeName([x509.DNSName("a.example")])),
        "exactly one URI SAN, found 0",
    ),
    "svid_trust_domain_id_without_path": (
        lambda b: _leaf(b, san=_uris("spiffe://example.org")),
        "has no path",
    ),
    "svid_uri_san_not_spiffe": (
        lambda b: _leaf(b, san=_uris("https://example.org/backend")),
        "not a SPIFFE ID",
    ),
    "svid_ca_leaf": (
        lambda b: _leaf(b, ca_flag=True, usage=_usage(cert_sign=True)),
        "is a CA certificate",
    ),
    "svid_missing_digital_signature": (
        lambda b: _leaf(b, usage=_usage(digital_signature=False)),
        "lacks digitalSignature",
    ),
    "svid_key_usage_not_critical": (
        lambda b: _leaf(b, usage_critical=False),
        "must be critical",
    ),
    "svid_key_cert_sign_on_leaf": (
        lambda b: _leaf(b, usage=_usage(cert_sign=True)),
        "must not include keyCertSign",
    ),
    "svid_eku_server_auth_only": (
        lambda b: _leaf(b, eku=[ExtendedKeyUsageOID.SERVER_AUTH]),
        "serverAuth and clientAuth",
    ),
    "svid_missing_basic_constraints": (
        lambda b: b.add_extension(_usage(), critical=True).add_extension(
            _uris(str(WORKLOAD_ID)), critical=False
        ),
        "no BasicConstraints",
    ),
}


VALIDATORS = {"verify": verify_x509_svid, "post_mint": check_minted_x509_svid}


@pytest.mark.parametrize("validator", sorted(VALIDATORS))
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_validator_rejects_crafted_svid(
    defect: str, validator: str, ca: CertificateAuthority, clock: ManualClock
) -> None:
    make, message = DEFECTS[defect]
    authority = ca.x509.active()
    leaf = make(_base(ca, clock.now())).sign(authority.key, hashes.SHA256())
    with pytest.raises(SvidValidationError, match=message):
        VALIDATORS[validator]([leaf, authority.certificate], ca.bundle(), clock.now())


def test_post_mint_validation_rejects_a_leaf_not_signed_by_its_issuer(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    forged = _leaf(_base(ca, clock.now())).sign(generate_key(), hashes.SHA256())
    with pytest.raises(SvidValidationError, match="not signed by its issuing CA"):
        check_minted_x509_svid([forged, ca.x509.active().certificate], ca.bundle(), clock.now())


def test_validator_rejects_svid_expired(ca: CertificateAuthority, clock: ManualClock) -> None:
    svid = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    later = clock.now() + dt.timedelta(hours=2)
    with pytest.raises(SvidValidationError, match="expired at"):
        verify_x509_svid(svid.chain, ca.bundle(), later)


def test_validator_rejects_svid_not_yet_valid(ca: CertificateAuthority, clock: ManualClock) -> None:
    svid = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    with pytest.raises(SvidValidationError, match="not valid before"):
        verify_x509_svid(svid.chain, ca.bundle(), clock.now() - dt.timedelta(minutes=5))


def test_validator_rejects_svid_against_wrong_bundle(
    ca: CertificateAuthority, clock: ManualClock, tmp_path: Path
) -> None:
    stranger = CertificateAuthority(CaConfig(TD), clock)
    svid = stranger.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    with pytest.raises(SvidValidationError, match="does not verify against the bundle"):
        verify_x509_svid(svid.chain, ca.bundle(), clock.now())
    assert openssl_verify(tmp_path, svid.chain, ca.bundle(), clock.now()).returncode != 0


def test_validator_rejects_svid_of_another_trust_domain(clock: ManualClock) -> None:
    from meshwarden.engine import SpiffeId, TrustDomain

    other = CertificateAuthority(CaConfig(TrustDomain("other.org")), clock)
    svid = other.sign_x509_svid(
        generate_key().public_key(), SpiffeId.parse("spiffe://other.org/ns/a/sa/b")
    )
    mine = CertificateAuthority(CaConfig(TD), clock)
    with pytest.raises(SvidValidationError, match=r"not in trust domain example\.org"):
        verify_x509_svid(svid.chain, mine.bundle(), clock.now())


def test_validator_rejects_svid_signed_by_a_key_outside_the_bundle(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    forged = _leaf(_base(ca, clock.now())).sign(generate_key(), hashes.SHA256())
    with pytest.raises(SvidValidationError, match="does not verify"):
        verify_x509_svid([forged, ca.x509.active().certificate], ca.bundle(), clock.now())


def test_validator_rejects_an_empty_chain(ca: CertificateAuthority, clock: ManualClock) -> None:
    with pytest.raises(SvidValidationError, match="empty"):
        verify_x509_svid([], ca.bundle(), clock.now())
