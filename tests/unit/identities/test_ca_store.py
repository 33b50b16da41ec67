"""A restarted server keeps its CA (and so its bundle); the state file is 0600."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from meshwarden.engine import TrustDomain
from meshwarden.identities import (
    CaConfig,
    ManualClock,
    StateError,
    generate_key,
    load_ca,
    save_ca,
    verify_x509_svid,
)

from .conftest import TD, WORKLOAD_ID


def test_saved_ca_reloads_with_the_same_bundle_and_keeps_signing(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "ca.json"
    ca = load_ca(path, CaConfig(TD), clock)
    clock.advance(dt.timedelta(hours=13))
    ca.rotate()
    save_ca(ca, path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_ca(path, CaConfig(TD), clock)
    assert again.bundle() == ca.bundle()
    svid = again.sign_x509_svid(generate_key().public_key(), WORKLOAD_ID)
    verify_x509_svid(svid.chain, ca.bundle(), clock.now())


def test_saved_ca_of_another_trust_domain_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "ca.json"
    save_ca(load_ca(path, CaConfig(TD), clock), path)
    with pytest.raises(StateError, match=r"CA is for trust domain 'example\.org'"):
        load_ca(path, CaConfig(TrustDomain("other.org")), clock)
