"""Verification of X509-SVIDs (SPIFFE X509-SVID spec §5). Every check raises
`SvidValidationError` naming the failed rule; nothing here returns a bool.

The CA runs the same verification on every SVID it mints (post-mint validation).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from meshwarden.engine import SpiffeId, SpiffeIdError
from meshwarden.identities._bundle import TrustBundle
from meshwarden.identities._errors import SvidValidationError
from meshwarden.identities._keys import PrivateKey


@dataclass(frozen=True)
class X509Svid:
    """An SVID chain, leaf first (then intermediates, never the bundle root); `key` is present
    only where the key lives (the agent), never on the server."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey | None = None

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def expires_at(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc


def _extension(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound as exc:
        raise SvidValidationError(f"X509-SVID leaf has no {kind.__name__} extension") from exc


def spiffe_id_of(leaf: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of a leaf: its one and only URI SAN, with a non-root path."""
    san = _extension(leaf, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise SvidValidationError(f"X509-SVID must have exactly one URI SAN, found {len(uris)}")
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise SvidValidationError(f"X509-SVID URI SAN is not a SPIFFE ID: {exc}") from exc
    if not spiffe_id.path:
        raise SvidValidationError(f"X509-SVID {spiffe_id} has no path (a trust domain ID)")
    return spiffe_id


def _check_leaf_constraints(leaf: x509.Certificate) -> None:
    constraints = _extension(leaf, x509.BasicConstraints).value
    assert isinstance(constraints, x509.BasicConstraints)
    if constraints.ca:
        raise SvidValidationError("X509-SVID leaf is a CA certificate (basicConstraints cA=true)")
    usage_ext = _extension(leaf, x509.KeyUsage)
    usage = usage_ext.value
    assert isinstance(usage, x509.KeyUsage)
    if not usage_ext.critical:
        raise SvidValidationError("X509-SVID keyUsage extension must be critical")
    if not usage.digital_signature:
        raise SvidValidationError("X509-SVID keyUsage lacks digitalSignature")
    if usage.key_cert_sign or usage.crl_sign:
        raise SvidValidationError("X509-SVID keyUsage must not include keyCertSign or cRLSign")
    _check_eku(leaf)


def _check_eku(leaf: x509.Certificate) -> None:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    needed = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    if not needed <= set(eku):
        raise SvidValidationError("X509-SVID extKeyUsage must include serverAuth and clientAuth")


def _check_validity(leaf: x509.Certificate, now: dt.datetime) -> None:
    if now < leaf.not_valid_before_utc:
        raise SvidValidationError(f"X509-SVID is not valid before {leaf.not_valid_before_utc}")
    if now > leaf.not_valid_after_utc:
        raise SvidValidationError(f"X509-SVID expired at {leaf.not_valid_after_utc}")


def _check_path(chain: Sequence[x509.Certificate], bundle: TrustBundle, now: dt.datetime) -> None:
    if not bundle.x509_authorities:
        raise SvidValidationError(f"the bundle of {bundle.trust_domain} has no X.509 authorities")
    store = verification.Store(list(bundle.x509_authorities))
    verifier = verification.PolicyBuilder().store(store).time(now).build_client_verifier()
    try:
        verifier.verify(chain[0], list(chain[1:]))
    except verification.VerificationError as exc:
        raise SvidValidationError(
            f"X509-SVID chain does not verify against the bundle of {bundle.trust_domain}: {exc}"
        ) from exc


def _check_leaf(leaf: x509.Certificate, bundle: TrustBundle, now: dt.datetime) -> SpiffeId:
    spiffe_id = spiffe_id_of(leaf)
    _check_leaf_constraints(leaf)
    if spiffe_id.trust_domain != bundle.trust_domain:
        raise SvidValidationError(
            f"X509-SVID {spiffe_id} is not in trust domain {bundle.trust_domain} of the bundle"
        )
    _check_validity(leaf, now)
    return spiffe_id


def check_minted_x509_svid(
    chain: Sequence[x509.Certificate], bundle: TrustBundle, now: dt.datetime
) -> SpiffeId:
    """Post-mint validation of a chain whose CA part already passed `verify_x509_svid`: the
    leaf's SPIFFE profile, its validity at `now`, and its signature by `chain[1]`."""
    spiffe_id = _check_leaf(chain[0], bundle, now)
    try:
        chain[0].verify_directly_issued_by(chain[1])
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SvidValidationError(f"X509-SVID is not signed by its issuing CA: {exc}") from exc
    return spiffe_id


def verify_x509_svid(
    chain: Sequence[x509.Certificate], bundle: TrustBundle, now: dt.datetime
) -> SpiffeId:
    """Verify a leaf-first chain against the bundle of its own trust domain; return its ID."""
    if not chain:
        raise SvidValidationError("X509-SVID chain is empty")
    spiffe_id = _check_leaf(chain[0], bundle, now)
    _check_path(chain, bundle, now)
    return spiffe_id
