"""meshwarden.engine: pure policy logic.

documents → validated model → registry (who is who) → compiled AuthorizationPlan per workload →
decision with explanation. No network, no gRPC, no Envoy types.
"""

from meshwarden.engine._collection import collection_paused
from meshwarden.engine._compiler import CompiledMesh, compile_documents
from meshwarden.engine._condition_keys import Attribute, ConditionKey
from meshwarden.engine._conditions import (
    CompiledCondition,
    IpCondition,
    PatternCondition,
    PortCondition,
    PortRanges,
)
from meshwarden.engine._diagnostics import Diagnostic, Location, Severity
from meshwarden.engine._documents import Document, DocumentKey
from meshwarden.engine._egress import DestinationIndex, EgressPlan, EgressPolicy
from meshwarden.engine._egress_rules import CompiledDestination, CompiledEgressRule, Flow
from meshwarden.engine._evaluator import (
    Decision,
    PolicyTrace,
    decide,
    decide_egress,
)
from meshwarden.engine._files import (
    FileChanged,
    Refused,
    UsageError,
    open_policy_file,
    read_text,
    scan_files,
)
from meshwarden.engine._hosts import (
    EVERYWHERE,
    Host,
    HostPort,
    collapse_networks,
    subtract_networks,
)
from meshwarden.engine._limits import LIMITS, InputLimits
from meshwarden.engine._lint import (
    LINT_CODES,
    Finding,
    FlowWindow,
    LintOptions,
    LintSeverity,
    invalid_input,
    lint,
)
from meshwarden.engine._load import (
    LoadResult,
    check_documents,
    find_files,
    load,
    parse_text,
    read_files,
)
from meshwarden.engine._model import WorkloadPort
from meshwarden.engine._mtls import MtlsSetting, mtls_setting
from meshwarden.engine._outcome import Outcome, dry_run_verdict
from meshwarden.engine._paths import PathDecision, decide_outbound, decide_path
from meshwarden.engine._patterns import IpNetwork, Patterns, normalize_path
from meshwarden.engine._plan import AuthorizationPlan, CompiledPolicy, RuleIndex
from meshwarden.engine._promotion import would_deny
from meshwarden.engine._recommend import Recommendation, recommend
from meshwarden.engine._registry import Mesh, Registry, Workload
from meshwarden.engine._reload import Reload, reload
from meshwarden.engine._request import Request
from meshwarden.engine._reserved import is_reserved
from meshwarden.engine._rules import CompiledOperation, CompiledRule, CompiledSource
from meshwarden.engine._spiffe import SpiffeId, SpiffeIdError, TrustDomain
from meshwarden.engine._vocabulary import Action, Cause, Direction, Effect, Mode, Peers
from meshwarden.engine._yaml import SourceDocument, read_documents

__all__ = [
    "EVERYWHERE",
    "LIMITS",
    "LINT_CODES",
    "Action",
    "Attribute",
    "AuthorizationPlan",
    "Cause",
    "CompiledCondition",
    "CompiledDestination",
    "CompiledEgressRule",
    "CompiledMesh",
    "CompiledOperation",
    "CompiledPolicy",
    "CompiledRule",
    "CompiledSource",
    "ConditionKey",
    "Decision",
    "DestinationIndex",
    "Diagnostic",
    "Direction",
    "Document",
    "DocumentKey",
    "Effect",
    "EgressPlan",
    "EgressPolicy",
    "FileChanged",
    "Finding",
    "Flow",
    "FlowWindow",
    "Host",
    "HostPort",
    "InputLimits",
    "IpCondition",
    "IpNetwork",
    "LintOptions",
    "LintSeverity",
    "LoadResult",
    "Location",
    "Mesh",
    "Mode",
    "MtlsSetting",
    "Outcome",
    "PathDecision",
    "PatternCondition",
    "Patterns",
    "Peers",
    "PolicyTrace",
    "PortCondition",
    "PortRanges",
    "Recommendation",
    "Refused",
    "Registry",
    "Reload",
    "Request",
    "RuleIndex",
    "Severity",
    "SourceDocument",
    "SpiffeId",
    "SpiffeIdError",
    "TrustDomain",
    "UsageError",
    "Workload",
    "WorkloadPort",
    "check_documents",
    "collapse_networks",
    "collection_paused",
    "compile_documents",
    "decide",
    "decide_egress",
    "decide_outbound",
    "decide_path",
    "dry_run_verdict",
    "find_files",
    "invalid_input",
    "is_reserved",
    "lint",
    "load",
    "mtls_setting",
    "normalize_path",
    "open_policy_file",
    "parse_text",
    "read_documents",
    "read_files",
    "read_text",
    "recommend",
    "reload",
    "scan_files",
    "subtract_networks",
    "would_deny",
]
