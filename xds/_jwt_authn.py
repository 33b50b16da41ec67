"""JWT verification on a workload's HTTP ports: Envoy's jwt_authn filter (a provider per
JwtIssuer: keys from the trust domain's JWT bundle, inline JWKS or a remote JWKS URI) and the
clusters that reach the remote JWKS URIs."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from meshwarden.engine import CompiledMesh, Workload
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._envoy import extension, static_cluster, upstream_tls
from meshwarden.xds._predicates import JWT_PAYLOAD_KEY


def jwt_authn_filter(issuers: tuple[Any, ...], ctx: TranslationContext) -> dict[str, Any] | None:
    """The jwt_authn filter of a workload's HTTP ports: a provider per JwtIssuer that selects
    it (the verified payload lands in the filter's metadata under `JWT_PAYLOAD_KEY`), or None
    without one."""
    if not issuers:
        return None
    providers = {}
    for doc in issuers:
        spec = doc.spec
        provider: dict[str, Any] = {
            "audiences": list(spec.audiences),
            "fromHeaders": [{"name": h.name, "valuePrefix": h.prefix} for h in spec.from_headers],
            "forward": spec.forward_original_token,
            "payloadInMetadata": JWT_PAYLOAD_KEY,
        }
        if spec.spiffe_trust_domain:
            jwks = ctx.jwt_bundle(spec.spiffe_trust_domain) or '{"keys": []}'
            provider["localJwks"] = {"inlineString": jwks}
        else:
            provider["issuer"] = spec.issuer
            if spec.jwks is not None:
                provider["localJwks"] = {"inlineString": spec.jwks}
            else:
                provider["remoteJwks"] = {
                    "httpUri": {
                        "uri": spec.jwks_uri,
                        "cluster": jwks_cluster_name(spec.jwks_uri),
                        "timeout": "5s",
                    },
                    "asyncFetch": {},
                    "cacheDuration": "300s",
                }
        providers[doc.ref] = provider
    return extension(
        "envoy.filters.http.jwt_authn",
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        providers=providers,
        rules=_jwt_rules(issuers),
    )


def _jwt_rules(issuers: tuple[Any, ...]) -> list[dict[str, Any]]:
    """A request carrying a token where a JwtIssuer looks for one must verify against one of
    the JwtIssuers looking there (else 401); a request without one is not checked. (A
    `requires_any` with `allow_missing` lets a token with the wrong audience through.)"""
    by_location: dict[tuple[str, str], list[str]] = {}
    for doc in issuers:
        for source in doc.spec.from_headers:
            by_location.setdefault((source.name.lower(), source.prefix), []).append(doc.ref)
    rules = []
    for (name, prefix), providers in sorted(by_location.items()):
        header: dict[str, Any] = {"name": name}
        if prefix:
            header["stringMatch"] = {"prefix": prefix}
        else:
            header["presentMatch"] = True
        requires: dict[str, Any] = (
            {"providerName": providers[0]}
            if len(providers) == 1
            else {"requiresAny": {"requirements": [{"providerName": p} for p in providers]}}
        )
        rules.append({"match": {"prefix": "/", "headers": [header]}, "requires": requires})
    return rules


def jwks_cluster_name(uri: str | None) -> str:
    parts = urlsplit(uri or "")
    return f"jwks:{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def jwks_clusters(mesh: CompiledMesh, workload: Workload) -> list[dict[str, Any]]:
    """A cluster per remote JWKS URI the workload's JwtIssuers fetch keys from."""
    clusters = {}
    for doc in mesh.plan(workload.ref).jwt_issuers:
        uri = doc.spec.jwks_uri
        if not uri:
            continue
        parts = urlsplit(uri)
        name = jwks_cluster_name(uri)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
        cluster = static_cluster(name, host, port, kind="STRICT_DNS", connect_timeout="5s")
        if parts.scheme == "https":
            cluster["transportSocket"] = upstream_tls(sni=host)
        clusters[name] = cluster
    return list(clusters.values())
