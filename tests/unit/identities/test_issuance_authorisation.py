"""Which node may obtain which SVID, and which caller matches which Workload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import CachedIdentity, IdentityCache, IssuanceError, X509Svid
from meshwarden.identities._registry import (
    authorise_issuance,
    matches_caller,
    servable_workloads,
)


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    spiffe_id: SpiffeId
    selectors: tuple[str, ...]


@dataclass(frozen=True)
class Registry:
    trust_domain: TrustDomain
    workloads: dict[str, Workload]


def _workload(name: str, *selectors: str) -> Workload:
    return Workload(
        "shop", name, SpiffeId.parse(f"spiffe://example.org/ns/shop/sa/{name}"), selectors
    )


REGISTRY = Registry(
    TrustDomain("example.org"),
    {
        w.name: w
        for w in (
            _workload("pinned", "node:node-a", "unix:uid:1001"),
            _workload("two-nodes", "node:node-a", "node:node-b", "unix:uid:1002"),
            _workload("anywhere", "unix:uid:1003"),
        )
    },
)


def test_a_node_serves_its_pinned_workloads_and_unpinned_ones() -> None:
    assert [w.name for w in servable_workloads(REGISTRY, "node-a")] == [
        "anywhere",
        "pinned",
        "two-nodes",
    ]
    assert [w.name for w in servable_workloads(REGISTRY, "node-c")] == ["anywhere"]


def test_issuance_for_a_workload_pinned_to_another_node_is_refused() -> None:
    with pytest.raises(IssuanceError, match="node 'node-c' may not serve"):
        authorise_issuance(REGISTRY, "node-c", REGISTRY.workloads["pinned"].spiffe_id)


def test_issuance_for_an_unregistered_id_is_refused() -> None:
    other = SpiffeId.parse("spiffe://example.org/ns/shop/sa/admin")
    with pytest.raises(IssuanceError, match="not the identity of any registered Workload"):
        authorise_issuance(REGISTRY, "node-a", other)


def test_any_of_several_node_selectors_may_serve() -> None:
    workload = REGISTRY.workloads["two-nodes"]
    assert authorise_issuance(REGISTRY, "node-b", workload.spiffe_id) is workload


def test_caller_matches_when_all_unix_selectors_are_among_its_own() -> None:
    caller = frozenset({"unix:uid:1001", "unix:gid:1001", "unix:path:/usr/bin/app"})
    assert matches_caller(("node:node-a", "unix:uid:1001"), caller)
    assert not matches_caller(("unix:uid:1001", "unix:path:/bin/other"), caller)


def test_a_workload_without_unix_selectors_matches_no_caller() -> None:
    assert not matches_caller(("node:node-a",), frozenset({"unix:uid:0"}))


_SELECTOR = st.sampled_from(["unix:uid:0", "unix:uid:7", "unix:path:/bin/app", "k8s:ns:shop"])


@given(
    st.lists(st.lists(_SELECTOR, max_size=3), max_size=5),
    st.frozensets(_SELECTOR, max_size=4),
)
def test_the_identity_cache_gives_a_caller_the_identities_it_matches(
    selector_lists: list[list[str]], caller: frozenset[str]
) -> None:
    """The cache keeps each identity's unix selectors from one update to the next; what it
    gives a caller is what `matches_caller` says, in registry order."""
    identities = [
        CachedIdentity(
            SpiffeId.parse(f"spiffe://example.org/ns/shop/sa/w{n}"),
            tuple(selectors),
            cast(X509Svid, None),  # not looked at here
        )
        for n, selectors in enumerate(selector_lists)
    ]
    cache = IdentityCache()
    cache.update(identities)
    expected = tuple(i for i in identities if matches_caller(i.selectors, caller))
    assert cache.identities_for(caller) == expected
