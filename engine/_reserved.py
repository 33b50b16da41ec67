"""SPIFFE IDs the mesh keeps for itself: no Workload may claim them, and the CA never signs them
for a workload."""

from __future__ import annotations

from meshwarden.engine._spiffe import SpiffeId, TrustDomain

RESERVED_PATH = "/meshwarden"


def is_reserved(spiffe_id: SpiffeId | str, trust_domain: TrustDomain | str) -> bool:
    """True when `spiffe_id` belongs to the mesh of `trust_domain` itself: the bare trust domain
    (`spiffe://td`) or a path at or under `/meshwarden` (`spiffe://td/meshwarden/...`: the
    control plane and the nodes). IDs of other trust domains are never reserved. Raises
    SpiffeIdError when either argument is not a valid SPIFFE ID / trust domain."""
    parsed = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
    domain = (
        trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain.parse(trust_domain)
    )
    if parsed.trust_domain != domain:
        return False
    path = parsed.path
    return path in ("", RESERVED_PATH) or path.startswith(RESERVED_PATH + "/")
