"""meshwarden.engine: pure policy logic.

documents → validated model → registry (who is who) → compiled AuthorizationPlan per workload →
decision with explanation. No network, no gRPC, no Envoy types.
"""

from meshwarden.engine._compiler import CompiledMesh, compile_documents
from meshwarden.engine._diagnostics import Diagnostic, Location, Severity
from meshwarden.engine._documents import Document, DocumentKey
from meshwarden.engine._evaluator import (
    DEFAULT_ALLOW,
    DEFAULT_DENY,
    JWT_INVALID,
    MTLS_REQUIRED,
    Decision,
    PolicyTrace,
    decide,
)
from meshwarden.engine._hosts import (
    EVERYWHERE,
    Host,
    HostPort,
    collapse_networks,
    subtract_networks,
)
from meshwarden.engine._load import (
    LoadResult,
    UsageError,
    check_documents,
    load,
    parse_text,
    read_files,
)
from meshwarden.engine._model import WorkloadPort
from meshwarden.engine._outcome import Outcome
from meshwarden.engine._patterns import IpNetwork, Patterns, normalize_path
from meshwarden.engine._plan import AuthorizationPlan, CompiledPolicy, RuleIndex
from meshwarden.engine._registry import Mesh, Registry, Workload
from meshwarden.engine._reload import Reload, reload
from meshwarden.engine._request import Request
from meshwarden.engine._rules import (
    CompiledCondition,
    CompiledOperation,
    CompiledRule,
    CompiledSource,
)
from meshwarden.engine._spiffe import SpiffeId, SpiffeIdError, TrustDomain

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_DENY",
    "EVERYWHERE",
    "JWT_INVALID",
    "MTLS_REQUIRED",
    "AuthorizationPlan",
    "CompiledCondition",
    "CompiledMesh",
    "CompiledOperation",
    "CompiledPolicy",
    "CompiledRule",
    "CompiledSource",
    "Decision",
    "Diagnostic",
    "Document",
    "DocumentKey",
    "Host",
    "HostPort",
    "IpNetwork",
    "LoadResult",
    "Location",
    "Mesh",
    "Outcome",
    "Patterns",
    "PolicyTrace",
    "Registry",
    "Reload",
    "Request",
    "RuleIndex",
    "Severity",
    "SpiffeId",
    "SpiffeIdError",
    "TrustDomain",
    "UsageError",
    "Workload",
    "WorkloadPort",
    "check_documents",
    "collapse_networks",
    "compile_documents",
    "decide",
    "load",
    "normalize_path",
    "parse_text",
    "read_files",
    "reload",
    "subtract_networks",
]
