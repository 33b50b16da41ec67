"""Join tokens are single-use, expire, and name a valid node."""

from __future__ import annotations

import datetime as dt

import pytest
from meshwarden.identities import AttestationError, JoinTokens, ManualClock


def test_a_token_redeems_once_for_its_node(clock: ManualClock) -> None:
    tokens = JoinTokens(clock)
    token = tokens.create("node-a")
    assert tokens.redeem(token) == "node-a"
    with pytest.raises(AttestationError, match="already used"):
        tokens.redeem(token)


def test_an_expired_token_is_refused(clock: ManualClock) -> None:
    tokens = JoinTokens(clock)
    token = tokens.create("node-a", dt.timedelta(minutes=10))
    clock.advance(dt.timedelta(minutes=10))
    with pytest.raises(AttestationError, match="expired"):
        tokens.redeem(token)


def test_a_token_never_issued_is_refused(clock: ManualClock) -> None:
    with pytest.raises(AttestationError, match="unknown"):
        JoinTokens(clock).redeem("guess")


@pytest.mark.parametrize("name", ["", "Node-A", "node_a", "-a", "a/b", "x" * 64])
def test_node_names_must_be_dns_labels(clock: ManualClock, name: str) -> None:
    with pytest.raises(ValueError, match="node name"):
        JoinTokens(clock).create(name)


def test_tokens_are_safe_to_pass_on_a_command_line(clock: ManualClock) -> None:
    tokens = JoinTokens(clock)
    for _ in range(500):  # a leading "-" would be read as an option by the agent's CLI
        token = tokens.create("node-a")
        assert len(token) == 48 and all(c in "0123456789abcdef" for c in token)
