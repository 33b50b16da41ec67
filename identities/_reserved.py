"""Identities that belong to the mesh itself: the bare trust domain and every path under
`/meshwarden/` (the control plane, the nodes). The CA signs them only through the calls meant for
them (`sign_server_svid`, `sign_node_svid`), never for a workload's CSR or JWT-SVID."""

from __future__ import annotations

from meshwarden.engine import SpiffeId, TrustDomain

RESERVED_PREFIX = "/meshwarden"


def is_reserved(spiffe_id: SpiffeId, trust_domain: TrustDomain) -> bool:
    """True when `spiffe_id` is the bare `trust_domain` or under its `/meshwarden/` paths."""
    if spiffe_id.trust_domain != trust_domain:
        return False
    path = spiffe_id.path
    return path in ("", "/", RESERVED_PREFIX) or path.startswith(RESERVED_PREFIX + "/")
