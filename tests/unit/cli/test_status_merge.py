"""`meshwarden status` over replicas: each sidecar is reported by the replica it is connected
to, and its SVID expiry is the newest any replica issued (plain values, no network)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from meshwarden.cli._status import _table, merge

NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


def view(state: str, streams: int, replica: str, expiry: str | None) -> dict[str, Any]:
    return {
        "state": state,
        "reason": "" if state == "SYNCED" else "why",
        "streams": streams,
        "replica": replica,
        "svid": {"expiry": expiry},
    }


def test_a_sidecar_is_reported_by_the_replica_it_is_connected_to() -> None:
    reports = {
        "a:9090": {"sidecars": {"shop/web-1": view("STALE", 0, "a", None)}},
        "b:9090": {"sidecars": {"shop/web-1": view("SYNCED", 1, "b", "2027-01-01T10:00:00+00:00")}},
    }
    [row] = merge(reports)
    assert (row["workload"], row["state"], row["replica"]) == ("shop/web-1", "SYNCED", "b")


def test_the_worst_state_wins_between_two_connected_replicas() -> None:
    reports = {
        "a:9090": {"sidecars": {"shop/web-1": view("SYNCED", 1, "a", None)}},
        "b:9090": {"sidecars": {"shop/web-1": view("NACK", 1, "b", None)}},
    }
    assert merge(reports)[0]["state"] == "NACK"


def test_the_svid_expiry_is_the_newest_any_replica_issued() -> None:
    """Agents renew through any replica: the connected one may not have signed the newest."""
    reports = {
        "a:9090": {"sidecars": {"shop/web-1": view("SYNCED", 1, "a", "2027-01-01T10:00:00+00:00")}},
        "b:9090": {"sidecars": {"shop/web-1": view("STALE", 0, "b", "2027-01-01T10:30:00+00:00")}},
    }
    [row] = merge(reports)
    assert (row["replica"], row["svidExpiry"]) == ("a", "2027-01-01T10:30:00+00:00")


def test_a_sidecar_with_a_problem_is_a_problem_row_with_the_reason() -> None:
    """/healthz `sidecarProblems` wins over the sync state; a problem sidecar with no stream
    (under `up`: its Envoy exited) still gets a row."""
    reports = {
        "a:9090": {
            "sidecars": {"shop/web-1": view("SYNCED", 1, "a", None)},
            "sidecarProblems": {
                "shop/web-1": "bootstrapped without --ext-authz-http-port",
                "shop/db-1": "its Envoy exited (status 1)",
            },
        }
    }
    rows = {row["workload"]: row for row in merge(reports)}
    assert (rows["shop/web-1"]["state"], rows["shop/web-1"]["reason"]) == (
        "PROBLEM",
        "bootstrapped without --ext-authz-http-port",
    )
    assert (rows["shop/db-1"]["state"], rows["shop/db-1"]["reason"]) == (
        "PROBLEM",
        "its Envoy exited (status 1)",
    )


def test_the_table_writes_a_nacks_control_characters_as_escapes() -> None:
    """A NACK's message is what the sidecar's ADS stream sent (any workload can open one with
    its own SVID): printed raw, an escape sequence in it would reach the operator's terminal."""
    nack = view("NACK", 1, "a", None) | {"reason": "Cluster v1: \x1b[2J\x1b]0;owned\x07\nbad"}
    [line] = _table(merge({"a:9090": {"sidecars": {"shop/web-1": nack}}}), NOW)[1:]
    assert line.endswith("Cluster v1: \\x1b[2J\\x1b]0;owned\\x07\\nbad")
    assert line.isprintable()
