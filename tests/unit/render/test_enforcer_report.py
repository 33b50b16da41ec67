"""What the agent's /healthz says of its packet filter after a refused table."""

from __future__ import annotations

from meshwarden._enforce import TableEnforcer


def test_a_refused_table_is_reported_unhealthy_with_the_reason_until_one_applies() -> None:
    enforcer = TableEnforcer()
    assert not enforcer.sync("table inet other {}")  # refused before nft runs: not our table
    report = enforcer.report()
    assert report["healthy"] is False and report["loaded"] is False
    assert report["failures"] == 1
    assert "previous table kept" in str(report["error"])
    assert "no inet meshwarden table" in str(report["error"])
