"""meshwarden.engine: pure policy logic.

documents → validated model → registry (who is who) → compiled AuthorizationPlan per workload →
decision with explanation. No network, no gRPC, no Envoy types.
"""

from meshwarden.engine._compiler import CompiledMesh, compile_documents, compile_policy
from meshwarden.engine._diagnostics import Diagnostic, Location, PolicyError, Severity
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
from meshwarden.engine._load import (
    LoadResult,
    UsageError,
    check_documents,
    find_files,
    load,
    parse_text,
    read_files,
)
from meshwarden.engine._outcome import Outcome
from meshwarden.engine._patterns import normalize_path
from meshwarden.engine._plan import AuthorizationPlan, CompiledPolicy, RuleIndex
from meshwarden.engine._registry import Mesh, Registry, Workload
from meshwarden.engine._reload import Reload, reload
from meshwarden.engine._request import Request
from meshwarden.engine._rules import CompiledRule
from meshwarden.engine._spiffe import SpiffeId, SpiffeIdError, TrustDomain

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_DENY",
    "JWT_INVALID",
    "MTLS_REQUIRED",
    "AuthorizationPlan",
    "CompiledMesh",
    "CompiledPolicy",
    "CompiledRule",
    "Decision",
    "Diagnostic",
    "Document",
    "DocumentKey",
    "LoadResult",
    "Location",
    "Mesh",
    "Outcome",
    "PolicyError",
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
    "check_documents",
    "compile_documents",
    "compile_policy",
    "decide",
    "find_files",
    "load",
    "normalize_path",
    "parse_text",
    "read_files",
    "reload",
]
