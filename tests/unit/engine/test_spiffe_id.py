import pytest
from meshwarden.engine import SpiffeId, SpiffeIdError, TrustDomain


def test_valid_id_round_trips_and_exposes_namespace():
    spiffe_id = SpiffeId.parse("spiffe://example.org/ns/shop/sa/backend")
    assert str(spiffe_id) == "spiffe://example.org/ns/shop/sa/backend"
    assert spiffe_id.trust_domain == TrustDomain("example.org")
    assert spiffe_id.namespace() == "shop"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("spiffe://Example.org/x", "lowercase"),
        ("SPIFFE://example.org/x", "scheme"),
        ("https://example.org/x", "spiffe://"),
        ("spiffe://example.org//x", "empty segment"),
        ("spiffe://example.org/x/", "empty segment"),
        ("spiffe://example.org/./x", "dot"),
        ("spiffe://example.org/a/../x", "dot"),
        ("spiffe://example.org/a%20b", "percent"),
        ("spiffe://example.org:8443/x", "port"),
        ("spiffe://user@example.org/x", "userinfo"),
        ("spiffe:///x", "empty"),
        ("spiffe://example.org/x?q=1", "query"),
        ("spiffe://example.org/" + "a" * 2048, "2048"),
        ("spiffe://" + "a" * 256, "255"),
        ("spiffe://example.org/a b", "contains"),
    ],
)
def test_invalid_ids_are_refused_with_the_reason(text, why):
    with pytest.raises(SpiffeIdError, match=why):
        SpiffeId.parse(text)


def test_trust_domain_accepts_bare_name_or_id_form():
    assert TrustDomain.parse("spiffe://example.org") == TrustDomain.parse("example.org")
    with pytest.raises(SpiffeIdError):
        TrustDomain.parse("spiffe://example.org/path")
