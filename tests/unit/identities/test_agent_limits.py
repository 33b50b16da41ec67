"""Pure parts of the agent's hardening: the per-uid gate, the rate-limited log and the outlook of
its identities during an outage (a manual clock, no sleeping)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import pytest
from cryptography import x509
from meshwarden.identities import CertificateAuthority, IdentityHealth, ManualClock, generate_key
from meshwarden.identities._limits import RateLimitedLog, SilenceDeadline, UidGate, UidRate
from meshwarden.identities._outlook import identity_health

from .conftest import WORKLOAD_ID


def test_the_gate_admits_up_to_the_limit_per_uid_and_frees_on_release() -> None:
    gate = UidGate(2)
    assert [gate.admit(1000) for _ in range(3)] == [True, True, False]
    assert gate.admit(1001)  # another uid has its own share
    gate.release(1000)
    assert gate.admit(1000) and not gate.admit(1000)


def test_the_rate_lets_a_burst_through_then_refills_per_uid() -> None:
    now = [0.0]
    rate = UidRate(per_second=10.0, burst=100, clock=lambda: now[0])
    assert all(rate.take(1000) for _ in range(100))  # a burst of 100 at once
    assert not rate.take(1000)
    assert rate.take(1001)  # another uid has its own bucket
    now[0] += 0.5  # five more for uid 1000
    assert [rate.take(1000) for _ in range(6)] == [True] * 5 + [False]
    now[0] += 3600.0
    assert sum(rate.take(1000) for _ in range(200)) == 100  # refilled to the burst, no more


def test_the_rate_forgets_full_buckets_when_many_uids_come() -> None:
    now = [0.0]
    rate = UidRate(per_second=1.0, burst=2, clock=lambda: now[0])
    for uid in range(10_000, 10_000 + 3 * UidRate.KEPT):
        rate.take(uid)
        now[0] += 0.001
    assert len(rate._buckets) <= UidRate.KEPT + 1


def test_the_silence_deadline_expires_each_unheard_connection_after_its_own_deadline() -> None:
    """One timer for all: connections watched at different times expire no earlier than their
    own deadline, in order, and a connection heard in time never expires."""

    async def run() -> tuple[dict[str, float], dict[str, float]]:
        loop = asyncio.get_running_loop()
        watched: dict[str, float] = {}
        expired: dict[str, float] = {}
        silence: SilenceDeadline[str] = SilenceDeadline(
            0.05, lambda name: expired.setdefault(name, loop.time())
        )
        for names in (["first"], ["heard", "later"], ["last"]):
            for name in names:
                watched[name] = loop.time()
                silence.watch(name)
            silence.heard("heard")  # in the middle of the watched ones
            await asyncio.sleep(0.02)
        for _ in range(200):
            if len(expired) == 3:
                break
            await asyncio.sleep(0.01)
        silence.close()
        return watched, expired

    watched, expired = asyncio.run(run())
    assert list(expired) == ["first", "later", "last"]
    assert all(expired[name] >= watched[name] + 0.05 for name in expired)


def test_the_log_says_one_line_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.flood"), interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.flood"):
        for _ in range(5000):
            limited.warning("uid:65534", "refused")
        limited.warning("uid:1000", "refused 1000")
        now[0] = 10.5
        limited.warning("uid:65534", "refused")
    assert [r.getMessage() for r in caplog.records] == [
        "refused",
        "refused 1000",
        "refused (4999 more like it in the last 10 s)",
    ]


def _leaf(ca: CertificateAuthority) -> x509.Certificate:
    return ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID).leaf  # 1 h lifetime


def test_identities_are_expiring_only_when_the_server_is_unreachable_in_their_last_quarter(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    leaf = _leaf(ca)
    at = clock.now() + dt.timedelta(minutes=46)  # 14 of 60 minutes left
    assert identity_health([leaf], at, sync_failing=False) is IdentityHealth.OK
    assert identity_health([leaf], at, sync_failing=True) is IdentityHealth.EXPIRING
    early = clock.now() + dt.timedelta(minutes=40)
    assert identity_health([leaf], early, sync_failing=True) is IdentityHealth.OK
    late = clock.now() + dt.timedelta(minutes=61)
    assert identity_health([leaf], late, sync_failing=False) is IdentityHealth.EXPIRED
