"""Applying tables with the agent's enforcer in a real nftables: atomic replacement, a failed
apply keeps the previous table in force, re-rendering is idempotent, --dry-run shows the diff."""

from __future__ import annotations

from meshwarden.render import node_filter, render_nftables

from meshwarden._enforce import TableEnforcer, loaded_table, table_diff

from ._lab import CLIENT_IPS, HOST_IP, inside, lab
from .test_render_nftables import SEED_HOST, compiled

INSIDE, _, OTHER = CLIENT_IPS


def rendered(text: str) -> str:
    return render_nftables(node_filter(compiled(text), "h1"))


def test_a_failed_apply_leaves_the_previous_table_in_force() -> None:
    good = rendered(SEED_HOST)
    opened = rendered(SEED_HOST.replace("from: [{ipBlocks: [10.77.1.0/24]}]", "", 1))
    # Fails midway: the new table's definitions parse, the last rule names a missing chain.
    broken = opened.replace(
        "\t\tmeta l4proto . th dport vmap @ports",
        "\t\tmeta l4proto . th dport vmap @ports\n\t\tjump nowhere",
    )
    with lab() as net:
        net.serve(net.host, "tcp:22")
        enforcer = TableEnforcer()
        assert inside(net.host, lambda: enforcer.sync(good))
        before = inside(net.host, loaded_table)
        assert not inside(net.host, lambda: enforcer.sync(broken))
        assert enforcer.error is not None and "nowhere" in enforcer.error
        assert inside(net.host, loaded_table) == before
        assert net.probe(net.client, [("tcp", OTHER, HOST_IP, 22)]) == ["silent"]
        assert inside(net.host, lambda: enforcer.sync(opened)) and enforcer.healthy
        assert net.probe(net.client, [("tcp", OTHER, HOST_IP, 22)]) == ["open"]


def test_rerendering_is_byte_identical_and_reapplying_changes_nothing() -> None:
    first, second = rendered(SEED_HOST), rendered(SEED_HOST)
    assert first == second
    with lab() as net:
        net.sh("nft", "-f", "-", ns=net.host, text=first)
        listing = inside(net.host, loaded_table)
        net.sh("nft", "-f", "-", ns=net.host, text=second)
        assert inside(net.host, loaded_table) == listing
        assert inside(net.host, lambda: table_diff(second)) == ""
        changed = rendered(SEED_HOST.replace("[443]", "[8443]"))
        diff = inside(net.host, lambda: table_diff(changed))
        lines = diff.splitlines()
        assert any(line.startswith("-") and "tcp . 443 : accept" in line for line in lines)
        assert any(line.startswith("+") and "tcp . 8443 : accept" in line for line in lines)
        assert inside(net.host, loaded_table) == listing  # a dry run applies nothing
