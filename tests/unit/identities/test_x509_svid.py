"""X509-SVIDs minted by the CA follow the SPIFFE X509-SVID spec and verify with openssl."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from meshwarden.engine import SpiffeId
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    IssuanceError,
    ManualClock,
    UpstreamCa,
    generate_key,
    verify_x509_svid,
)
from meshwarden.identities._keys import private_key_pkcs8_der
from spiffe import X509Svid as PySpiffeX509Svid

from .conftest import TD, WORKLOAD_ID, assert_openssl_accepts, openssl_verify


def test_svid_has_exactly_one_uri_san_that_is_the_spiffe_id(ca: CertificateAuthority) -> None:
    svid = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    san = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(WORKLOAD_ID)]


def test_svid_is_not_a_ca_and_has_critical_digital_signature_key_usage(
    ca: CertificateAuthority,
) -> None:
    leaf = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID).leaf
    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert basic.value.ca is False
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.crl_sign


def test_svid_has_server_and_client_auth_extended_key_usage(ca: CertificateAuthority) -> None:
    leaf = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID).leaf
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_svid_not_before_is_backdated_and_not_after_is_the_ttl(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    leaf = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID).leaf
    now = clock.now()
    assert now - dt.timedelta(seconds=60) < leaf.not_valid_before_utc < now
    assert leaf.not_valid_after_utc == now + dt.timedelta(hours=1)


def test_svid_not_after_never_exceeds_the_signing_ca(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    svid = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID, ttl=dt.timedelta(days=9))
    assert svid.leaf.not_valid_after_utc == svid.chain[1].not_valid_after_utc


def test_svid_chain_verifies_with_openssl_against_the_exported_bundle(
    ca: CertificateAuthority, clock: ManualClock, tmp_path: Path
) -> None:
    svid = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    assert_openssl_accepts(tmp_path, svid.chain, ca.bundle(), clock.now())


def test_svid_and_key_are_accepted_by_the_py_spiffe_parser(ca: CertificateAuthority) -> None:
    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), WORKLOAD_ID)
    der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in svid.chain)
    parsed = PySpiffeX509Svid.parse_raw(der, private_key_pkcs8_der(key))
    assert str(parsed.spiffe_id) == str(WORKLOAD_ID)


def test_ca_refuses_an_id_of_another_trust_domain(ca: CertificateAuthority) -> None:
    other = SpiffeId.parse("spiffe://evil.org/ns/shop/sa/backend")
    with pytest.raises(IssuanceError, match=r"not in trust domain example\.org"):
        ca.sign_x509_svid(generate_key().public_key(), other)


def test_ca_certificates_have_unique_subjects_across_rotations(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    certificates = set()
    for _ in range(18):
        certificates |= {a.certificate for a in ca.x509.published()}
        clock.advance(dt.timedelta(hours=4))
        ca.rotate()
    assert len(certificates) >= 4
    assert len({c.subject for c in certificates}) == len(certificates)


def _openssl_upstream_ca(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "upstream.pem", tmp_path / "upstream.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "3650",
            "-subj",
            "/O=Upstream Corp/CN=Upstream Root",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_intermediate_under_an_upstream_ca_issues_svids_openssl_accepts(tmp_path: Path) -> None:
    cert_file, key_file = _openssl_upstream_ca(tmp_path)
    upstream = UpstreamCa.load(cert_file, key_file)
    clock = ManualClock(dt.datetime.now(dt.UTC))
    ca = CertificateAuthority(CaConfig(TD, upstream=upstream), clock)
    svid = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    assert len(svid.chain) == 2
    assert ca.bundle().x509_authorities == upstream.chain
    verify_x509_svid(svid.chain, ca.bundle(), clock.now())
    assert_openssl_accepts(tmp_path, svid.chain, ca.bundle(), clock.now())


def test_openssl_rejects_an_svid_against_another_trust_domains_bundle(
    ca: CertificateAuthority, clock: ManualClock, tmp_path: Path
) -> None:
    other = CertificateAuthority(CaConfig(TD), clock)
    svid = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    result = openssl_verify(tmp_path, svid.chain, other.bundle(), clock.now())
    assert result.returncode != 0
