"""Engine rules → Envoy unified-matcher predicates (`xds.type.matcher.v3.Matcher.MatcherList.
Predicate`), as JSON-shaped dicts.

One rule becomes AND(OR(sources), OR(operations), AND(conditions)). The translator knows which
filter chain it builds for — mTLS (the peer always has a verified identity) or plaintext (it
never has one) — so identity and IP fields are resolved statically per branch: a source whose
fields cannot apply to the branch is dropped, and a rule left without sources is dropped
(`None`), exactly as the evaluator's identity-first rule says. Port constraints are resolved
statically per listener port too. Missing inputs (no header, no claim) make a single predicate
false and its negation true, which is the engine's missing-attribute rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from meshwarden.engine import (
    Attribute,
    CompiledCondition,
    CompiledOperation,
    CompiledRule,
    CompiledSource,
    ConditionKey,
    IpCondition,
    IpNetwork,
    PatternCondition,
    Patterns,
    PortCondition,
)
from meshwarden.xds._envoy import extension

Predicate = dict[str, Any]
JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD_KEY = "jwt_payload"


def _regex(regex: str) -> dict[str, Any]:
    return {"safeRegex": {"googleRe2": {}, "regex": regex}}


_input = extension  # a matcher input is a typed extension


URI_SAN = _input(
    "envoy.matching.inputs.uri_san", "envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput"
)
_NETWORK = "envoy.extensions.matching.common_inputs.network.v3."
SOURCE_IP = _input("envoy.matching.inputs.direct_source_ip", _NETWORK + "DirectSourceIPInput")
DEST_PORT = _input("envoy.matching.inputs.destination_port", _NETWORK + "DestinationPortInput")


def header(name: str) -> dict[str, Any]:
    return _input(
        "envoy.matching.inputs.request_headers",
        "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
        headerName=name,
    )


def jwt_claim(path: str) -> dict[str, Any]:
    segments = [{"key": JWT_PAYLOAD_KEY}, *({"key": part} for part in path.split("."))]
    return _input(
        "envoy.matching.inputs.dynamic_metadata",
        "envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput",
        filter=JWT_FILTER,
        path=segments,
    )


# -- combinators ---------------------------------------------------------------------------
TRUE: Predicate = {"singlePredicate": {"input": DEST_PORT, "valueMatch": _regex(".*")}}


def all_of(predicates: list[Predicate]) -> Predicate:
    if not predicates:
        return TRUE
    if len(predicates) == 1:
        return predicates[0]
    return {"andMatcher": {"predicate": predicates}}


def any_of(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    return {"orMatcher": {"predicate": predicates}}


def negate(predicate: Predicate) -> Predicate:
    return {"notMatcher": predicate}


def single(input_: dict[str, Any], string_matcher: dict[str, Any]) -> Predicate:
    return {"singlePredicate": {"input": input_, "valueMatch": string_matcher}}


# -- value patterns ------------------------------------------------------------------------
def string_matchers(patterns: Patterns) -> list[dict[str, Any]]:
    fold = {"ignoreCase": True} if patterns.fold_case else {}
    if patterns.anything:
        return [_regex(".+")]
    found = [{"exact": e, **fold} for e in sorted(patterns.exact)]
    found += [{"prefix": p, **fold} if p else _regex(".+") for p in patterns.prefixes]
    found += [{"suffix": s, **fold} if s else _regex(".+") for s in patterns.suffixes]
    return found


def matches(input_: dict[str, Any], patterns: Patterns) -> Predicate:
    return any_of([single(input_, m) for m in string_matchers(patterns)])


def path_matchers(patterns: Patterns) -> list[dict[str, Any]]:
    """`:path` carries the query string; the engine matches without it."""
    query = r"(\?.*)?"
    if patterns.anything:
        return [_regex(".*")]
    found = [_regex(re.escape(e) + query) for e in sorted(patterns.exact)]
    found += [{"prefix": p} for p in patterns.prefixes if p]
    found += [_regex(r"[^?]*" + re.escape(s) + query) for s in patterns.suffixes]
    found += [_regex(t.regex + query) for t in patterns.templates]
    return found


def path_matches(patterns: Patterns) -> Predicate:
    return any_of([single(header(":path"), m) for m in path_matchers(patterns)])


def ip_in(networks: tuple[IpNetwork, ...]) -> Predicate:
    ranges = [{"addressPrefix": str(n.network_address), "prefixLen": n.prefixlen} for n in networks]
    custom = extension(
        "envoy.matching.matchers.ip",
        "envoy.extensions.matching.input_matchers.ip.v3.Ip",
        cidrRanges=ranges,
        statPrefix="meshwarden_ip",
    )
    return {"singlePredicate": {"input": SOURCE_IP, "customMatch": custom}}


def claim_matches(path: str, patterns: Patterns) -> Predicate:
    """A claim (string, or list with any element matching) at a dotted path of the payload."""
    alternatives = []
    for string_match in string_matchers(patterns):
        for value in (
            {"stringMatch": string_match},
            {"listMatch": {"oneOf": {"stringMatch": string_match}}},
        ):
            custom = _metadata_matcher(value)
            alternatives.append(
                {"singlePredicate": {"input": jwt_claim(path), "customMatch": custom}}
            )
    return any_of(alternatives)


def namespace_matches(patterns: Patterns) -> Predicate:
    """`spiffe://<td>/ns/<ns>[/...]` with the namespace matching the patterns."""
    parts = []
    if patterns.anything:
        parts.append(r"[^/]+")
    parts += [re.escape(e) for e in sorted(patterns.exact)]
    parts += [re.escape(p) + r"[^/]*" for p in patterns.prefixes]
    parts += [r"[^/]*" + re.escape(s) for s in patterns.suffixes]
    regex = r"spiffe://[^/]+/ns/(" + "|".join(parts) + r")(/.*)?"
    return single(URI_SAN, _regex(regex))


# -- rules ---------------------------------------------------------------------------------
def source_predicate(source: CompiledSource, identified: bool) -> Predicate | None:
    """None when the source can never match a peer of this branch."""
    if not source.peers.admit(identified):
        return None
    parts: list[Predicate] = []
    if source.identities is not None:
        parts.append(matches(URI_SAN, source.identities))
    if source.not_identities is not None:
        parts.append(negate(matches(URI_SAN, source.not_identities)))
    if source.workloads is not None:
        if not source.workloads:
            return None
        parts.append(matches(URI_SAN, Patterns.of(sorted(source.workloads))))
    if source.namespaces is not None:
        parts.append(namespace_matches(source.namespaces))
    if source.jwt is not None:
        parts.extend(_jwt_parts(source))
    if source.ip_blocks is not None:
        parts.append(ip_in(source.ip_blocks))
    if source.not_ip_blocks is not None:
        parts.append(negate(ip_in(source.not_ip_blocks)))
    return all_of(parts)


def _jwt_parts(source: CompiledSource) -> list[Predicate]:
    """A verified token (its payload in jwt_authn's metadata) meeting every constraint."""
    jwt = source.jwt
    assert jwt is not None
    parts = []
    if jwt.issuers is not None:
        parts.append(claim_matches("iss", jwt.issuers))
    if jwt.subjects is not None:
        parts.append(claim_matches("sub", jwt.subjects))
    parts += [claim_matches(path, wanted) for path, wanted in jwt.claims]
    return parts or [token_present()]


def _metadata_matcher(value: dict[str, Any]) -> dict[str, Any]:
    return extension(
        "envoy.matching.matchers.metadata_matcher",
        "envoy.extensions.matching.input_matchers.metadata.v3.Metadata",
        value=value,
    )


def token_present() -> Predicate:
    payload = _input(
        "envoy.matching.inputs.dynamic_metadata",
        _NETWORK + "DynamicMetadataInput",
        filter=JWT_FILTER,
        path=[{"key": JWT_PAYLOAD_KEY}],
    )
    custom = _metadata_matcher({"presentMatch": True})
    return {"singlePredicate": {"input": payload, "customMatch": custom}}


def operation_predicate(op: CompiledOperation, port: int) -> Predicate | None:
    if not op.admits_port(port):
        return None
    parts: list[Predicate] = []
    for positive, negative, build in (
        (op.methods, op.not_methods, _method_matches),
        (op.paths, op.not_paths, path_matches),
        (op.hosts, op.not_hosts, _host_matches),
    ):
        if positive is not None:
            parts.append(build(positive))
        if negative is not None:
            parts.append(negate(build(negative)))
    return all_of(parts)


def _method_matches(patterns: Patterns) -> Predicate:
    return matches(header(":method"), patterns)


def _host_matches(patterns: Patterns) -> Predicate:
    return matches(header(":authority"), patterns)


def condition_predicate(cond: CompiledCondition, port: int, identified: bool) -> Predicate | None:
    """None: the condition is statically false here; TRUE when it always holds here."""
    if not cond.key.peers.admit(identified):
        return None
    parts: list[Predicate] = []
    match cond:
        case PortCondition():
            return TRUE if cond.admits(port) else None
        case IpCondition(values=values, not_values=not_values):
            parts += [ip_in(values)] if values is not None else []
            parts += [negate(ip_in(not_values))] if not_values is not None else []
        case PatternCondition(key=key, values=values, not_values=not_values):
            build = _pattern_builder(key)
            parts += [build(values)] if values is not None else []
            parts += [negate(build(not_values))] if not_values is not None else []
    return all_of(parts)


def _pattern_builder(key: ConditionKey) -> Callable[[Patterns], Predicate]:
    attribute, argument = key.attribute, key.argument
    if attribute is Attribute.SOURCE_IDENTITY:
        return lambda p: matches(URI_SAN, p)
    if attribute is Attribute.SOURCE_NAMESPACE:
        return namespace_matches
    if attribute is Attribute.REQUEST_METHOD:
        return _method_matches
    if attribute is Attribute.REQUEST_PATH:
        return path_matches
    if attribute is Attribute.REQUEST_HEADER:
        return lambda p: matches(header(argument), p)
    return lambda p: claim_matches(argument, p)


def rule_predicate(rule: CompiledRule, port: int, identified: bool) -> Predicate | None:
    """The whole rule for one listener port and branch; None if it can never match there."""
    parts: list[Predicate] = []
    if rule.sources:
        sources = [p for s in rule.sources if (p := source_predicate(s, identified)) is not None]
        if not sources:
            return None
        parts.append(any_of(sources))
    if rule.operations:
        ops = [p for o in rule.operations if (p := operation_predicate(o, port)) is not None]
        if not ops:
            return None
        parts.append(any_of(ops))
    for cond in rule.conditions:
        predicate = condition_predicate(cond, port, identified)
        if predicate is None:
            return None
        if predicate is not TRUE:
            parts.append(predicate)
    return all_of([p for p in parts if p is not TRUE])
