"""Which node may obtain which SVID, and which caller matches which Workload."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import IssuanceError
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
