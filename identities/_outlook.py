"""Will this node's identities outlive a control-plane outage? The agent renews every SVID at
half its lifetime; when renewals have failed until less than a quarter of a lifetime is left,
new mTLS connections will start failing at that SVID's expiry unless the server comes back."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable

from cryptography import x509

AT_RISK = 0.25  # of an SVID's lifetime left, with the last sync failed


class IdentityHealth(enum.StrEnum):
    """The outlook of the SVIDs an agent holds (its /healthz `identity`)."""

    OK = "ok"
    EXPIRING = "expiring"  # the server is unreachable and an SVID is in its last quarter
    EXPIRED = "expired"  # an SVID held has expired: new connections with it fail


def identity_health(
    certificates: Iterable[x509.Certificate], now: dt.datetime, sync_failing: bool
) -> IdentityHealth:
    """The worst state over `certificates` (the node SVID and every workload SVID held)."""
    health = IdentityHealth.OK
    for certificate in certificates:
        not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        if not_after <= now:
            return IdentityHealth.EXPIRED
        if sync_failing and not_after - now < (not_after - not_before) * AT_RISK:
            health = IdentityHealth.EXPIRING
    return health
