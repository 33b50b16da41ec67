"""meshwarden.identities: SPIFFE CA, X.509-/JWT-SVIDs, bundles, rotation, attestation and the
Workload API server."""

from meshwarden.identities._agent import Agent, AgentConfig
from meshwarden.identities._attestation import PeerProcess, peer_process, unix_selectors
from meshwarden.identities._authority import JwtAuthority, UpstreamCa, X509Authority
from meshwarden.identities._bundle import JwtKey, TrustBundle
from meshwarden.identities._ca import CaConfig, CertificateAuthority
from meshwarden.identities._ca_store import decode_ca, encode_ca, load_ca, save_ca
from meshwarden.identities._cache import CachedIdentity, IdentityCache
from meshwarden.identities._clock import Clock, ManualClock, SystemClock
from meshwarden.identities._errors import (
    AttestationError,
    BundleError,
    IdentityError,
    IssuanceError,
    StateError,
    StoreUnreachable,
    SvidValidationError,
)
from meshwarden.identities._files import check_private_dir, write_file
from meshwarden.identities._grpc_calls import LocalServer
from meshwarden.identities._grpc_connection import GrpcConnection
from meshwarden.identities._grpc_tls import MtlsEndpoint, RotatingCredentials
from meshwarden.identities._issued_nodes import IssuedNodes, fingerprint
from meshwarden.identities._join_tokens import (
    SERVER_DNS_NAME,
    JoinTokens,
    check_node_name,
    server_spiffe_id,
)
from meshwarden.identities._jwt import JwtSvid, verify_jwt_svid
from meshwarden.identities._keys import generate_key, load_private_key_pem, private_key_pkcs8_pem
from meshwarden.identities._limits import ConnectionLimits, raise_descriptor_limit
from meshwarden.identities._local_endpoint import LocalEndpoint, caller_process, caller_selectors
from meshwarden.identities._node_api import NodeRecords, TokenRedeemer, node_api_services
from meshwarden.identities._node_client import read_server_bundle
from meshwarden.identities._outlook import IdentityHealth
from meshwarden.identities._registry import RegisteredWorkload, WorkloadRegistry
from meshwarden.identities._rotation import Slot, SlotState
from meshwarden.identities._tls_front import ServerTls, TlsEndpoint
from meshwarden.identities._validate import X509Svid, spiffe_id_of, verify_x509_svid
from meshwarden.identities._workload_api import workload_api_services

__all__ = [
    "SERVER_DNS_NAME",
    "Agent",
    "AgentConfig",
    "AttestationError",
    "BundleError",
    "CaConfig",
    "CachedIdentity",
    "CertificateAuthority",
    "Clock",
    "ConnectionLimits",
    "GrpcConnection",
    "IdentityCache",
    "IdentityError",
    "IdentityHealth",
    "IssuanceError",
    "IssuedNodes",
    "JoinTokens",
    "JwtAuthority",
    "JwtKey",
    "JwtSvid",
    "LocalEndpoint",
    "LocalServer",
    "ManualClock",
    "MtlsEndpoint",
    "NodeRecords",
    "PeerProcess",
    "RegisteredWorkload",
    "RotatingCredentials",
    "ServerTls",
    "Slot",
    "SlotState",
    "StateError",
    "StoreUnreachable",
    "SvidValidationError",
    "SystemClock",
    "TlsEndpoint",
    "TokenRedeemer",
    "TrustBundle",
    "UpstreamCa",
    "WorkloadRegistry",
    "X509Authority",
    "X509Svid",
    "caller_process",
    "caller_selectors",
    "check_node_name",
    "check_private_dir",
    "decode_ca",
    "encode_ca",
    "fingerprint",
    "generate_key",
    "load_ca",
    "load_private_key_pem",
    "node_api_services",
    "peer_process",
    "private_key_pkcs8_pem",
    "raise_descriptor_limit",
    "read_server_bundle",
    "save_ca",
    "server_spiffe_id",
    "spiffe_id_of",
    "unix_selectors",
    "verify_jwt_svid",
    "verify_x509_svid",
    "workload_api_services",
    "write_file",
]
