"""An Istio `from[].source` and `when[]` as policy-language sources and conditions.

Identity fields map one to one (principals → identities, namespaces, serviceAccounts →
identities, and their not-forms → notIdentities). `requestPrincipals` (`<iss>/<sub>`) become a
`jwt` constraint, one source per value. Addresses need care, because an identified peer is
never matched by address here: a source with ipBlocks (or a `source.ip` condition) becomes the
identities of the imported pods whose addresses it covers, plus the same blocks for peers
without an identity. `remoteIpBlocks` / `remote.ip` (X-Forwarded-For) are refused.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from meshwarden.importers._context import ImportContext
from meshwarden.importers._fields import Fields
from meshwarden.importers._istio_common import (
    ALL_ADDRESSES,
    namespace_exclusion,
    principal_patterns,
    service_account_patterns,
    strings,
    suffix_overreach,
)

Path = tuple[str | int, ...]
SOURCE_FIELDS = (
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
)
_IDENTITY_FIELDS = (
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
)
_CLAIM_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")
_JWT_KEYS = {"request.auth.audiences": "aud", "request.auth.presenter": "azp"}
_DIRECT = "meshwarden only trusts the direct peer address (use ipBlocks)"
SUPPORTED_KEYS = (
    "request.headers[NAME]",
    "source.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[NAME]...",
    "destination.port",
)


@dataclass(slots=True)
class RuleParts:
    """A rule being translated: its sources (None = any), rule-wide conditions, and address
    constraints from `when: source.ip` to fold into every source."""

    sources: list[dict[str, Any]] | None = None
    when: list[dict[str, Any]] = field(default_factory=list)
    ip_values: list[str] | None = None
    ip_not_values: list[str] | None = None


def read_source(
    ctx: ImportContext, fields: Fields, path: Path, parts: RuleParts
) -> list[dict[str, Any]] | None:
    """The sources one `from` entry stands for (several: one per request principal); None
    after an error."""
    if fields.obj.get(*path) is None:
        return [{}]
    if fields.mapping(*path) is None:
        return None
    fields.known(path, SOURCE_FIELDS)
    for name in ("remoteIpBlocks", "notRemoteIpBlocks"):
        if fields.obj.get(*path, name):
            message = f"{name} come from X-Forwarded-For or PROXY protocol; {_DIRECT}"
            fields.fail((*path, name), message)
            return None
    source: dict[str, Any] = {}
    if not _identity_fields(ctx, fields, path, source):
        return None
    if not _not_request_principals(fields, path, parts):
        return None
    return _request_principals(fields, path, source)


def _identity_fields(ctx: ImportContext, fields: Fields, path: Path, out: dict[str, Any]) -> bool:
    ok = True
    mapping = (
        ("principals", "identities", principal_patterns),
        ("notPrincipals", "notIdentities", principal_patterns),
        ("serviceAccounts", "identities", service_account_patterns),
        ("notServiceAccounts", "notIdentities", service_account_patterns),
    )
    for name, target, convert in mapping:
        for value, where in strings(fields, (*path, name)):
            patterns = convert(ctx, value)
            overreach = suffix_overreach(ctx, value) if convert is principal_patterns else None
            if patterns is None or overreach is not None:
                fields.fail(where, overreach or _spelling(name, value))
                ok = False
                continue
            out.setdefault(target, []).extend(p for p in patterns if p not in out[target])
    namespaces = [v for v, _ in strings(fields, (*path, "namespaces"))]
    if namespaces:
        out["namespaces"] = namespaces
    for value, where in strings(fields, (*path, "notNamespaces")):
        pattern = namespace_exclusion(ctx, value)
        if pattern is None:
            fields.fail(
                where,
                f"notNamespaces value {value!r}: a '*suffix' namespace pattern "
                "has no identity spelling; list the namespaces",
            )
            ok = False
            continue
        out.setdefault("notIdentities", []).append(pattern)
    blocks = [v for v, _ in strings(fields, (*path, "ipBlocks"))]
    not_blocks = [v for v, _ in strings(fields, (*path, "notIpBlocks"))]
    if (blocks or not_blocks) and any(fields.obj.get(*path, n) for n in _IDENTITY_FIELDS):
        where = (*path, "ipBlocks" if blocks else "notIpBlocks")
        fields.fail(
            where,
            "ipBlocks with principals/namespaces/serviceAccounts in one source "
            "cannot be kept: meshwarden never matches an identified peer by address; "
            "use two sources or two rules",
        )
        return False
    if blocks:
        out["ipBlocks"] = blocks
    if not_blocks:
        out["notIpBlocks"] = not_blocks
    return ok


def _spelling(name: str, value: str) -> str:
    if name.endswith(("principals", "Principals")):
        return (
            f"{name} value {value!r} has no SPIFFE spelling; write <trust-domain>/ns/<ns>/sa/<sa>"
        )
    return f"{name} value {value!r}: write <namespace>/<account>"


def _request_principals(
    fields: Fields, path: Path, source: dict[str, Any]
) -> list[dict[str, Any]] | None:
    values = strings(fields, (*path, "requestPrincipals"))
    if not values:
        return [source]
    out = []
    for value, where in values:
        jwt = request_principal(value)
        if jwt is None:
            fields.fail(
                where, f"requestPrincipals value {value!r}: write <iss>/<sub>, <iss>/* or *"
            )
            return None
        out.append({**source, "jwt": jwt})
    return out


def request_principal(value: str) -> dict[str, Any] | None:
    """`<iss>/<sub>` (split at the last '/'), `<iss>/*` or `*` as a jwt constraint."""
    if value == "*":
        return {}
    if "*" in value[:-1] or "/" not in value:
        return None
    issuer, _, subject = value.rpartition("/")
    if not issuer or not subject:
        return None
    return {"issuers": [issuer]} if subject == "*" else {"issuers": [issuer], "subjects": [subject]}


def _not_request_principals(fields: Fields, path: Path, parts: RuleParts) -> bool:
    """notRequestPrincipals `*` / `<iss>/*` as a condition on the token's issuer (rule-wide,
    so only in a rule with one source)."""
    values = strings(fields, (*path, "notRequestPrincipals"))
    if not values:
        return True
    if len(fields.obj.get(*path[:-2]) or []) > 1:
        fields.fail(
            (*path, "notRequestPrincipals"),
            "notRequestPrincipals is supported in a rule with a single source; split the rule",
        )
        return False
    issuers = []
    for value, where in values:
        if value != "*" and not (value.endswith("/*") and "*" not in value[:-1]):
            fields.fail(
                where,
                f"notRequestPrincipals value {value!r}: only * and <iss>/* "
                "can be expressed (as a condition on the issuer)",
            )
            return False
        issuers.append("*" if value == "*" else value[:-2])
    parts.when.append({"key": "request.jwt.claims[iss]", "notValues": issuers})
    return True


def read_condition(ctx: ImportContext, fields: Fields, path: Path, parts: RuleParts) -> bool:
    """One `when` entry into `parts`; False after an error."""
    if fields.mapping(*path) is None:
        return False
    fields.known(path, ("key", "values", "notValues"))
    key = fields.string(*path, "key")
    values = [v for v, _ in strings(fields, (*path, "values"))] or None
    not_values = [v for v, _ in strings(fields, (*path, "notValues"))] or None
    if key is None or (values is None and not_values is None):
        fields.fail(path, "a condition needs a key and values or notValues")
        return False
    if key == "source.ip":
        parts.ip_values, parts.ip_not_values = values, not_values
        return True
    converted = _condition_key(ctx, key, values, not_values)
    if converted is None:
        fields.fail(
            (*path, "key"),
            f"condition key {key!r} is not supported; supported: " + ", ".join(SUPPORTED_KEYS),
        )
        return False
    if isinstance(converted, str):
        fields.fail((*path, "values" if values else "notValues"), converted)
        return False
    parts.when.extend(converted)
    return True


def _condition_key(
    ctx: ImportContext, key: str, values: list[str] | None, not_values: list[str] | None
) -> list[dict[str, Any]] | str | None:
    """The conditions for one Istio key, an error message, or None for an unknown key."""

    def one(new_key: str, convert: Any = None) -> list[dict[str, Any]] | str:
        out: dict[str, Any] = {"key": new_key}
        for name, given in (("values", values), ("notValues", not_values)):
            if given is not None:
                found = [p for v in given for p in (convert(v) if convert else [v])]
                out[name] = found
        return [out]

    if key.startswith("request.headers[") and key.endswith("]"):
        return one(key)
    if key in ("source.namespace", "destination.port"):
        return one(key)
    if key == "source.principal":
        given = (values or []) + (not_values or [])
        if any(principal_patterns(ctx, v) is None for v in given):
            return "source.principal values are written <trust-domain>/ns/<ns>/sa/<sa>"
        overreach = next(filter(None, (suffix_overreach(ctx, v) for v in given)), None)
        if overreach is not None:
            return overreach
        return one("source.identity", lambda v: principal_patterns(ctx, v))
    if key in _JWT_KEYS:
        return one(f"request.jwt.claims[{_JWT_KEYS[key]}]")
    claim = _CLAIM_KEY.fullmatch(key)
    if claim is not None:
        names = claim.group(1)[1:-1].split("][")
        if any("." in n for n in names):
            return "claim names containing '.' cannot be told apart from nested claims here"
        return one(f"request.jwt.claims[{'.'.join(names)}]")
    if key == "request.auth.principal":
        return _auth_principal(values, not_values)
    return None


def _auth_principal(
    values: list[str] | None, not_values: list[str] | None
) -> list[dict[str, Any]] | str:
    """request.auth.principal: one `<iss>/<sub>`, or `*` / `<iss>/*` values (on the issuer)."""
    out: list[dict[str, Any]] = []
    if values is not None:
        found = [request_principal(v) for v in values]
        if any(f is None for f in found):
            return "request.auth.principal values are <iss>/<sub>, <iss>/* or *"
        if len(values) == 1 and found[0] and "subjects" in found[0]:
            out.append({"key": "request.jwt.claims[iss]", "values": found[0]["issuers"]})
            out.append({"key": "request.jwt.claims[sub]", "values": found[0]["subjects"]})
        elif any(f and "subjects" in f for f in found):
            return "several <iss>/<sub> values cannot be expressed; use one per rule"
        else:
            issuers = ["*" if not f else f["issuers"][0] for f in found]
            out.append({"key": "request.jwt.claims[iss]", "values": issuers})
    if not_values is not None:
        issuers = []
        for value in not_values:
            jwt = request_principal(value)
            if jwt is None or "subjects" in jwt:
                return "request.auth.principal notValues can be * or <iss>/* only"
            issuers.append("*" if not jwt else jwt["issuers"][0])
        out.append({"key": "request.jwt.claims[iss]", "notValues": issuers})
    return out


_SOURCE_IP = (
    "a source.ip condition with sources that name identities or addresses cannot be kept; "
    "put the addresses in from.source.ipBlocks"
)


def with_addresses(
    ctx: ImportContext,
    fields: Fields,
    where: Path,
    sources: list[dict[str, Any]] | None,
    parts: RuleParts,
) -> list[dict[str, Any]] | None:
    """Fold a `source.ip` condition into the sources, then turn every source with addresses
    into identities of the covered pods plus the IP fallback."""
    if parts.ip_values is not None or parts.ip_not_values is not None:
        folded = []
        for source in sources or [{}]:
            if any(
                k in source
                for k in ("ipBlocks", "notIpBlocks", "identities", "notIdentities", "namespaces")
            ):
                fields.fail(where, _SOURCE_IP)
                return None
            folded.append({**source, **_ip_fields(parts.ip_values, parts.ip_not_values)})
        sources = folded
    if sources is None:
        return None
    out: list[dict[str, Any]] = []
    for source in sources:
        for expanded in _by_address(ctx, fields, where, source):
            if expanded not in out:
                out.append(expanded)
    return out


def _ip_fields(values: list[str] | None, not_values: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if values is not None:
        out["ipBlocks"] = values
    if not_values is not None:
        out["notIpBlocks"] = not_values
    return out


def _by_address(
    ctx: ImportContext, fields: Fields, where: Path, source: dict[str, Any]
) -> list[dict[str, Any]]:
    blocks, not_blocks = source.get("ipBlocks"), source.get("notIpBlocks")
    if blocks is None and not_blocks is None:
        return [source]
    inside = [_network(b) for b in blocks or ALL_ADDRESSES]
    outside = [_network(b) for b in not_blocks or []]
    if any(n is None for n in inside + outside):
        fields.fail(where, "ipBlocks/notIpBlocks/source.ip values must be IPs or CIDRs")
        return []
    covered = [p for p in ctx.inventory.pods if _covered(p.addresses, inside, outside)]
    ctx.select(covered, fields.obj.at(*where), "these addresses (by the pods' addresses)")
    rest = {k: v for k, v in source.items() if k not in ("ipBlocks", "notIpBlocks")}
    fallback = {**rest, "ipBlocks": [str(n) for n in inside]}
    if outside:
        fallback["notIpBlocks"] = [str(n) for n in outside]
    identities = sorted({ctx.identity(p) for p in covered})
    return [{**rest, "identities": identities}, fallback] if identities else [fallback]


def _network(text: str) -> Any:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _covered(addresses: tuple[str, ...], inside: list[Any], outside: list[Any]) -> bool:
    for text in addresses:
        address = ipaddress.ip_address(text)
        in_blocks = any(address.version == n.version and address in n for n in inside)
        if in_blocks and not any(address.version == n.version and address in n for n in outside):
            return True
    return False
