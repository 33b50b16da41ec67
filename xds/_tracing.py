"""Envoy's OpenTelemetry tracer on inbound HTTP ports, with the decision on every span.

Envoy's span for a request is tagged, when it finishes, from dynamic metadata and literals:
a small Lua filter (first in the chain, so its response hook runs for every reply, including
the 401/403 local replies of jwt_authn and RBAC) reads what the RBAC filters or the ext_authz
answer recorded and writes the verdict — decision, policy, rule, dry-run — into the
`meshwarden` namespace; the HCM's `custom_tags` copy those onto the span. The Lua mapping
mirrors `xds._decisions.verdict_from_envoy` (a test keeps them in step).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from string import Template
from typing import Any
from urllib.parse import urlsplit

from meshwarden.engine import Cause, CompiledMesh, Effect
from meshwarden.xds._decisions import (
    ALLOW_PREFIX,
    DENY_PREFIX,
    DRY_ALLOW_PREFIX,
    DRY_DENY_PREFIX,
    EXT_AUTHZ_NS,
    RBAC_NS,
)

_T = "type.googleapis.com/"
TRACING_CLUSTER = "meshwarden-otlp"
TAGS_NS = "meshwarden"
_H2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicitHttpConfig": {"http2ProtocolOptions": {}},
    }
}


# Envoy's tracer sends a gRPC export every 5 spans by default (runtime
# `tracing.opentelemetry.min_flush_spans`): at 100 % sampling that is an export call per few
# requests. Sidecar bootstraps batch 200 spans or 1 s, whichever comes first.
TRACER_RUNTIME = {
    "tracing.opentelemetry.min_flush_spans": 200,
    "tracing.opentelemetry.flush_interval_ms": 1000,
}


@dataclass(frozen=True)
class TracingTarget:
    """An OTLP/gRPC collector (`http://host:port`, or `https://` for TLS) and the sampling
    percentage of requests Envoy traces (a request's `traceparent`, if any, must be sampled
    too: Envoy 1.40 does not trace an unsampled request because its caller sampled it)."""

    host: str
    port: int
    tls: bool = False
    sampling: float = 100.0

    @classmethod
    def from_url(cls, url: str, sampling: float = 100.0) -> TracingTarget:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https", "grpc") or not parts.hostname:
            raise ValueError(
                f"OTLP endpoint {url!r}: expected http://HOST:PORT or https://HOST:PORT "
                "(OTLP over gRPC, e.g. http://127.0.0.1:4317)"
            )
        port = parts.port or 4317
        return cls(parts.hostname, port, parts.scheme == "https", sampling)


class _DocumentDigests:
    """Per compiled mesh (cached while its `hashes` mapping is the same object): one digest of
    the documents every plan depends on (Mesh, Workloads, Services: who is who) and the hash of
    each policy and issuer document by reference."""

    def __init__(self) -> None:
        self._hashes: object = None
        self.registry = ""
        self.by_ref: dict[tuple[str, str], str] = {}

    def of(self, mesh: CompiledMesh) -> _DocumentDigests:
        if mesh.hashes is not self._hashes:
            registry = hashlib.sha256()
            by_ref = {}
            for key in sorted(mesh.hashes, key=lambda k: (k.kind, k.namespace, k.name)):
                if key.kind in ("AuthorizationPolicy", "JwtIssuer"):
                    by_ref[(key.kind, f"{key.namespace}/{key.name}")] = mesh.hashes[key]
                else:
                    registry.update(mesh.hashes[key].encode())
            self._hashes, self.registry, self.by_ref = mesh.hashes, registry.hexdigest(), by_ref
        return self


_digests = _DocumentDigests()


def policy_version(mesh: CompiledMesh, workload: str) -> str:
    """A short content hash of what decides requests to `workload`: the documents of who is who
    and the policies and JWT issuers that select it. Decision spans carry it; the control
    plane's listener push spans name it, so a decision finds the push that installed it."""
    digests = _digests.of(mesh)
    plan = mesh.plan(workload)
    digest = hashlib.sha256(digests.registry.encode())
    for policy in plan.policies:
        digest.update(digests.by_ref.get(("AuthorizationPolicy", policy.ref), "").encode())
    for issuer in plan.jwt_issuers:
        digest.update(digests.by_ref.get(("JwtIssuer", issuer.ref), "").encode())
    return digest.hexdigest()[:16]


_LUA = Template(
    """
local RBAC, EXT = "$rbac", "$ext"
local function split(name)
  local policy, rule = string.match(name, "^(.*)#(%d+)$$")
  if policy then return policy, rule end
  return name, nil
end
local function stage(md, prefix, kind)
  local result = md[prefix .. kind .. "_engine_result"]
  if result == nil then return nil, nil end
  return result, md[prefix .. kind .. "_effective_policy_id"] or ""
end
local function verdict(info, status)
  local ext = info:dynamicMetadata():get(EXT)
  if ext ~= nil and ext["decision"] ~= nil then
    return ext["decision"], ext["policy"], ext["rule"], ext["dry_run_decision"],
      ext["dry_run_policy"]
  end
  local md = info:dynamicMetadata():get(RBAC) or {}
  local dd, dp = nil, nil
  local sdr, sdp = stage(md, "$dry_deny", "shadow")
  local sar, sap = stage(md, "$dry_allow", "shadow")
  if sdr == "denied" then dd, dp = "$effect_deny", split(sdp)
  elseif sar == "allowed" then dd, dp = "$effect_allow", split(sap)
  elseif sar ~= nil then dd, dp = "$effect_deny", "$default_deny"
  elseif sdr ~= nil then dd, dp = "$effect_allow", "$default_allow" end
  local r, p = stage(md, "$deny", "enforced")
  if r == "denied" then
    local policy, rule = split(p)
    return "$effect_deny", policy, rule, dd, dp
  end
  local ar, ap = stage(md, "$allow", "enforced")
  if ar ~= nil then
    if ap == "" then ap = "$default_deny" end
    local policy, rule = split(ap)
    return (ar == "allowed") and "$effect_allow" or "$effect_deny", policy, rule, dd, dp
  end
  if r ~= nil then return "$effect_allow", "$default_allow", nil, dd, dp end
  if status == nil or status == "401" then return "$effect_deny", "$jwt_invalid", nil, nil, nil end
  return (status == "403") and "$effect_deny" or "$effect_allow", "$unavailable", nil, nil, nil
end
function envoy_on_response(handle)
  local info = handle:streamInfo()
  local d, p, r, dd, dp = verdict(info, handle:headers():get(":status"))
  local md = info:dynamicMetadata()
  md:set("$ns", "decision", d)
  md:set("$ns", "policy", p)
  if type(r) == "number" then r = string.format("%d", r) end
  if r ~= nil then md:set("$ns", "rule", r) end
  if dd ~= nil then
    md:set("$ns", "dry_run_decision", dd)
    md:set("$ns", "dry_run_policy", dp)
  end
end
"""
).substitute(
    rbac=RBAC_NS,
    ext=EXT_AUTHZ_NS,
    deny=DENY_PREFIX,
    allow=ALLOW_PREFIX,
    dry_deny=DRY_DENY_PREFIX,
    dry_allow=DRY_ALLOW_PREFIX,
    effect_allow=Effect.ALLOW,
    effect_deny=Effect.DENY,
    default_allow=Cause.DEFAULT_ALLOW,
    default_deny=Cause.DEFAULT_DENY,
    jwt_invalid=Cause.JWT_INVALID,
    unavailable=Cause.AUTHZ_UNAVAILABLE,
    ns=TAGS_NS,
)


# Which requests are not sampled, read where the HTTP filters run: the connection manager has
# written its tracing decision into the UUID `x-request-id` (the version digit becomes 9 sampled,
# a client-forced, b forced; it stays 4 when not traced) — at route selection it has not yet, so
# a route cannot tell. Envoy exports a span only if that decision is to trace and a `traceparent`
# the request came with, if any, is sampled. Anything the patterns do not recognise (another id
# format, a malformed or repeated header) runs the tagging filter.
UNTRACED_REQUEST_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$"
UNSAMPLED_TRACEPARENT = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f][02468ace]$"


def _header(name: str, regex: str) -> dict[str, Any]:
    """A predicate on a request header: it is present and all of it matches `regex`."""
    header = {"@type": _T + "envoy.type.matcher.v3.HttpRequestHeaderMatchInput", "headerName": name}
    value = {"safeRegex": {"googleRe2": {}, "regex": regex}}
    return {
        "singlePredicate": {"input": {"name": name, "typedConfig": header}, "valueMatch": value}
    }


def _not_sampled() -> dict[str, Any]:
    untraced = _header("x-request-id", UNTRACED_REQUEST_ID)
    unsampled_parent = _header("traceparent", UNSAMPLED_TRACEPARENT)
    return {"orMatcher": {"predicate": [untraced, unsampled_parent]}}


def decision_tags_filter() -> dict[str, Any]:
    """The Lua filter that records the verdict for the span tags (first HTTP filter), skipped
    for requests that are not sampled: their span is never exported, and running the script
    costs 10-40 µs per request."""
    lua = {
        "name": "envoy.filters.http.lua",
        "typedConfig": {
            "@type": _T + "envoy.extensions.filters.http.lua.v3.Lua",
            "defaultSourceCode": {"inlineString": _LUA},
        },
    }
    skip = {"@type": _T + "envoy.extensions.filters.common.matcher.action.v3.SkipFilter"}
    matcher = {
        "matcherList": {
            "matchers": [
                {
                    "predicate": _not_sampled(),
                    "onMatch": {"action": {"name": "skip-unsampled", "typedConfig": skip}},
                }
            ]
        }
    }
    return {
        "name": "envoy.filters.http.lua",
        "typedConfig": {
            "@type": _T + "envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            "xdsMatcher": matcher,
            "extensionConfig": lua,
        },
    }


def _from_metadata(tag: str, key: str) -> dict[str, Any]:
    key_path = {"key": TAGS_NS, "path": [{"key": key}]}
    return {"tag": tag, "metadata": {"kind": {"request": {}}, "metadataKey": key_path}}


def hcm_tracing(target: TracingTarget, workload: str, port: int, version: str) -> dict[str, Any]:
    """The HCM `tracing` block: OTLP/gRPC export and the meshwarden.* attributes."""
    tags = [
        _from_metadata("meshwarden.authz.decision", "decision"),
        _from_metadata("meshwarden.authz.policy", "policy"),
        _from_metadata("meshwarden.authz.rule", "rule"),
        _from_metadata("meshwarden.authz.dry_run.decision", "dry_run_decision"),
        _from_metadata("meshwarden.authz.dry_run.policy", "dry_run_policy"),
        {"tag": "meshwarden.source.spiffe_id", "value": "%DOWNSTREAM_PEER_URI_SAN%"},
        {
            "tag": "meshwarden.source.address",
            "value": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
        },
        {"tag": "meshwarden.destination.workload", "literal": {"value": workload}},
        {"tag": "meshwarden.destination.port", "literal": {"value": str(port)}},
        {"tag": "meshwarden.policy.version", "literal": {"value": version}},
    ]
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typedConfig": {
                "@type": _T + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpcService": {"envoyGrpc": {"clusterName": TRACING_CLUSTER}, "timeout": "1s"},
                "serviceName": f"{workload} sidecar",
            },
        },
        "randomSampling": {"value": target.sampling},
        "customTags": tags,
    }


def tracing_clusters(target: TracingTarget | None) -> list[dict[str, Any]]:
    """The cluster Envoy exports spans to ([] when tracing is off)."""
    if target is None:
        return []
    cluster: dict[str, Any] = {
        "name": TRACING_CLUSTER,
        "type": "STRICT_DNS",
        "connectTimeout": "2s",
        "typedExtensionProtocolOptions": _H2,
        "loadAssignment": {
            "clusterName": TRACING_CLUSTER,
            "endpoints": [
                {
                    "lbEndpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socketAddress": {
                                        "address": target.host,
                                        "portValue": target.port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if target.tls:
        cluster["transportSocket"] = {
            "name": "envoy.transport_sockets.tls",
            "typedConfig": {
                "@type": _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": target.host,
            },
        }
    return [cluster]
