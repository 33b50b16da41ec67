"""Certificate templates: what an X509-SVID and a signing CA certificate contain.

X509-SVID (SPIFFE X509-SVID spec §2-§4): exactly one URI SAN, basicConstraints cA=false, critical
keyUsage digitalSignature only, extKeyUsage serverAuth+clientAuth. CA certificates: cA=true,
critical keyUsage keyCertSign+cRLSign, the trust domain's ID as URI SAN, and a Subject made unique
by a serialNumber attribute (SPIRE #4415: identical CA subjects break chain building).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities._keys import PublicKey

NOT_BEFORE_BACKDATE = dt.timedelta(seconds=10)
ORGANIZATION = "meshwarden"


def ca_subject(trust_domain: TrustDomain, serial: int) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain.name} CA"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{serial:x}"),
        ]
    )


def svid_subject() -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)])


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def ca_template(
    *,
    public_key: PublicKey,
    trust_domain: TrustDomain,
    serial: int,
    issuer: x509.Name | None,
    issuer_key: PublicKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    """A signing CA: self-signed when `issuer` is None, else an intermediate under `issuer`."""
    subject = ca_subject(trust_domain, serial)
    td_uri = x509.UniformResourceIdentifier(trust_domain.id_string())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
        .add_extension(x509.SubjectAlternativeName([td_uri]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
    )


def x509_svid_template(
    *,
    public_key: PublicKey,
    spiffe_id: SpiffeId,
    serial: int,
    issuer: x509.Certificate,
    not_before: dt.datetime,
    not_after: dt.datetime,
    dns_names: tuple[str, ...] = (),
) -> x509.CertificateBuilder:
    """A leaf X509-SVID for `spiffe_id` issued by the CA certificate `issuer`."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    names += [x509.DNSName(name) for name in dns_names]
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(svid_subject())
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )
