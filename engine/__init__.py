"""meshwarden.engine: pure policy logic (documents -> model -> registry -> plan -> decision)."""

from meshwarden.engine._spiffe import SpiffeId, SpiffeIdError, TrustDomain

__all__ = ["SpiffeId", "SpiffeIdError", "TrustDomain"]
