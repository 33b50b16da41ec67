"""The mesh's own identities (the bare trust domain, `/meshwarden/...`) are never signed for a
workload: not as an X509-SVID from a public key or a CSR, not as a JWT-SVID. The server and node
SVIDs come only from the calls made for them."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from meshwarden.engine import SpiffeId, is_reserved
from meshwarden.identities import (
    CertificateAuthority,
    IssuanceError,
    generate_key,
    spiffe_id_of,
)

from .conftest import TD, WORKLOAD_ID

RESERVED = [
    "spiffe://example.org/meshwarden/node/node-a",
    "spiffe://example.org/meshwarden/server",
    "spiffe://example.org/meshwarden",
    "spiffe://example.org/meshwarden/anything/else",
    "spiffe://example.org",
]


def _csr() -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(generate_key(), hashes.SHA256())


@pytest.mark.parametrize("reserved", RESERVED)
def test_the_ca_refuses_a_workload_svid_for_a_reserved_id(
    ca: CertificateAuthority, reserved: str
) -> None:
    spiffe_id = SpiffeId.parse(reserved)
    with pytest.raises(IssuanceError, match="reserved for the mesh itself"):
        ca.sign_x509_svid(generate_key().public_key(), spiffe_id)
    with pytest.raises(IssuanceError, match="reserved for the mesh itself"):
        ca.sign_csr(_csr(), spiffe_id)
    with pytest.raises(IssuanceError, match="reserved for the mesh itself"):
        ca.sign_jwt_svid(spiffe_id, ["api"])


def test_paths_that_only_look_alike_are_ordinary_workload_ids(ca: CertificateAuthority) -> None:
    for text in ("spiffe://example.org/meshwardens/x", "spiffe://example.org/ns/meshwarden/sa/x"):
        spiffe_id = SpiffeId.parse(text)
        assert not is_reserved(spiffe_id, TD)
        assert ca.sign_x509_svid(generate_key().public_key(), spiffe_id).spiffe_id == spiffe_id
    assert not is_reserved(SpiffeId.parse("spiffe://other.org/meshwarden/server"), TD)


def test_the_server_and_node_svids_come_from_their_own_calls(ca: CertificateAuthority) -> None:
    server = ca.sign_server_svid(generate_key().public_key())
    assert str(spiffe_id_of(server.leaf)) == "spiffe://example.org/meshwarden/server"
    node = ca.sign_node_csr(_csr(), "node-a")
    assert str(spiffe_id_of(node.leaf)) == "spiffe://example.org/meshwarden/node/node-a"


def test_workload_svids_never_carry_the_dns_name_agents_check(ca: CertificateAuthority) -> None:
    leaf = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID).leaf
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
