"""meshwarden.identities: SPIFFE CA, X.509-/JWT-SVIDs, bundles, rotation, attestation and the
Workload API server."""

from meshwarden.identities._authority import JwtAuthority, UpstreamCa, X509Authority
from meshwarden.identities._bundle import JwtKey, TrustBundle
from meshwarden.identities._ca import CaConfig, CertificateAuthority
from meshwarden.identities._clock import Clock, ManualClock, SystemClock
from meshwarden.identities._errors import (
    AttestationError,
    BundleError,
    IdentityError,
    IssuanceError,
    SvidValidationError,
)
from meshwarden.identities._jwt import JwtSvid, verify_jwt_svid
from meshwarden.identities._keys import generate_key
from meshwarden.identities._rotation import Slot, SlotState
from meshwarden.identities._validate import X509Svid, spiffe_id_of, verify_x509_svid

__all__ = [
    "AttestationError",
    "BundleError",
    "CaConfig",
    "CertificateAuthority",
    "Clock",
    "IdentityError",
    "IssuanceError",
    "JwtAuthority",
    "JwtKey",
    "JwtSvid",
    "ManualClock",
    "Slot",
    "SlotState",
    "SvidValidationError",
    "SystemClock",
    "TrustBundle",
    "UpstreamCa",
    "X509Authority",
    "X509Svid",
    "generate_key",
    "spiffe_id_of",
    "verify_jwt_svid",
    "verify_x509_svid",
]
