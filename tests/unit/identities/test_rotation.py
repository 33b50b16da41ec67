"""CA and JWT key rotation on an injected clock: prepared → active → retired, the next key is in
the bundle before it signs, and SVIDs of the old and new CA both verify across the overlap."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from meshwarden.identities import (
    CertificateAuthority,
    ManualClock,
    SlotState,
    SvidValidationError,
    generate_key,
    verify_jwt_svid,
    verify_x509_svid,
)

from .conftest import WORKLOAD_ID, assert_openssl_accepts

HOUR = dt.timedelta(hours=1)


def _states(ca: CertificateAuthority) -> list[SlotState]:
    return [slot.state for slot in ca.x509.slots]


def test_next_ca_is_prepared_at_half_life_and_published_before_it_signs(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    first = ca.x509.active()
    clock.advance(12 * HOUR)
    assert ca.rotate() is True
    assert _states(ca) == [SlotState.ACTIVE, SlotState.PREPARED]
    prepared = ca.x509.slots[1].authority
    assert prepared.certificate in ca.bundle().x509_authorities
    svid = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    assert svid.chain[1] == first.certificate


def test_prepared_ca_is_activated_at_one_sixth_remaining_and_old_one_retired(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    first = ca.x509.active()
    clock.advance(12 * HOUR)
    ca.rotate()
    clock.advance(8 * HOUR)
    ca.rotate()
    assert _states(ca) == [SlotState.RETIRED, SlotState.ACTIVE]
    assert ca.x509.active() is not first
    assert first.certificate in ca.bundle().x509_authorities


def test_ca_rollover_keeps_old_and_new_svids_verifiable_across_the_overlap(
    ca: CertificateAuthority, clock: ManualClock, tmp_path: Path
) -> None:
    clock.advance(12 * HOUR)
    ca.rotate()
    clock.advance(7 * HOUR + 45 * dt.timedelta(minutes=1))
    old = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    clock.advance(15 * dt.timedelta(minutes=1))
    ca.rotate()
    new = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    assert old.chain[1] != new.chain[1]
    clock.advance(30 * dt.timedelta(minutes=1))
    for index, svid in enumerate((old, new)):
        verify_x509_svid(svid.chain, ca.bundle(), clock.now())
        (tmp_path / str(index)).mkdir()
        assert_openssl_accepts(tmp_path / str(index), svid.chain, ca.bundle(), clock.now())


def test_retired_ca_leaves_the_bundle_once_expired_and_its_svids_no_longer_verify(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    first = ca.x509.active()
    clock.advance(12 * HOUR)
    ca.rotate()
    clock.advance(8 * HOUR)
    ca.rotate()
    clock.advance(4 * HOUR + dt.timedelta(seconds=1))
    ca.rotate()
    assert first.certificate not in ca.bundle().x509_authorities
    assert [slot.state for slot in ca.x509.slots] == [SlotState.ACTIVE, SlotState.PREPARED]


def test_bundle_sequence_increases_on_every_rotation_change(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    sequences = [ca.bundle().sequence]
    for _ in range(6):
        clock.advance(4 * HOUR)
        ca.rotate()
        sequences.append(ca.bundle().sequence)
    assert sequences == sorted(sequences) and sequences[-1] > sequences[0]


def test_next_jwt_key_is_in_the_bundle_before_it_signs_and_old_tokens_still_verify(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    first_kid = ca.jwt.active().kid
    clock.advance(12 * HOUR)
    ca.rotate()
    next_kid = ca.jwt.slots[1].authority.kid
    assert {k.kid for k in ca.bundle().jwt_keys} == {first_kid, next_kid}
    clock.advance(7 * HOUR + 58 * dt.timedelta(minutes=1))
    old_token = ca.sign_jwt_svid(WORKLOAD_ID, ["backend"]).token
    clock.advance(2 * dt.timedelta(minutes=1))
    ca.rotate()
    new = ca.sign_jwt_svid(WORKLOAD_ID, ["backend"])
    assert ca.jwt.active().kid == next_kid
    verify_jwt_svid(old_token, ca.bundle(), "backend", clock.now())
    verify_jwt_svid(new.token, ca.bundle(), "backend", clock.now())


def test_server_down_past_ca_expiry_activates_a_fresh_ca_on_restart(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    stale = ca.x509.active()
    before = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    clock.advance(30 * HOUR)
    ca.rotate()
    assert ca.x509.active() is not stale
    assert stale.certificate not in ca.bundle().x509_authorities
    svid = ca.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    verify_x509_svid(svid.chain, ca.bundle(), clock.now())
    with pytest.raises(SvidValidationError, match="expired"):
        verify_x509_svid(before.chain, ca.bundle(), clock.now())
