"""The SPIFFE IDs the mesh keeps for itself (`is_reserved`, also used by the CA)."""

from __future__ import annotations

import pytest
from meshwarden.engine import SpiffeId, SpiffeIdError, TrustDomain, is_reserved


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://example.org",
        "spiffe://example.org/meshwarden",
        "spiffe://example.org/meshwarden/server",
        "spiffe://example.org/meshwarden/node/node-1",
        "spiffe://example.org/meshwarden/anything/else",
    ],
)
def test_the_trust_domain_and_its_meshwarden_paths_are_reserved(spiffe_id: str) -> None:
    assert is_reserved(spiffe_id, "example.org")
    assert is_reserved(SpiffeId.parse(spiffe_id), TrustDomain("example.org"))


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://example.org/meshwardens",
        "spiffe://example.org/ns/meshwarden/sa/server",
        "spiffe://example.org/MeshWarden/server",
        "spiffe://other.org/meshwarden/server",
        "spiffe://other.org",
    ],
)
def test_lookalikes_and_other_trust_domains_are_not_reserved(spiffe_id: str) -> None:
    assert not is_reserved(spiffe_id, "example.org")


def test_the_trust_domain_may_be_given_as_its_spiffe_id() -> None:
    assert is_reserved("spiffe://example.org/meshwarden/server", "spiffe://example.org")


def test_an_invalid_id_raises_instead_of_answering() -> None:
    with pytest.raises(SpiffeIdError):
        is_reserved("spiffe://example.org/meshwarden/../x", "example.org")
