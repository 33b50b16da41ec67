"""ext_authz enforcement: a CheckRequest read into the engine's Request."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from meshwarden.engine import Request, SpiffeId
from meshwarden.protos import check_view_pb2 as view
from meshwarden.xds._ext_authz_filter import JWT_AUTHN_NS
from meshwarden.xds._predicates import JWT_PAYLOAD_KEY


@dataclass(frozen=True, slots=True)
class CheckAttributes:
    """What the engine reads of a CheckRequest: the peer's verified identity (`source.principal`,
    empty for a plaintext peer) and address, the HTTP request (none on a tcp port) and the
    payload jwt_authn verified, when a token came."""

    principal: str = ""
    source_ip: str = ""
    http: bool = False
    method: str = ""
    path: str = ""
    host: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    jwt_payload: Any = None  # the verified token's claims (JSON-shaped), None without a token
    jwt_raw: bytes = b""  # the same claims as they came on the wire (a cache key)


def decode_check(buf: bytes) -> CheckAttributes:
    """A CheckRequest's attributes, parsed by protobuf's upb into a view that declares only the
    fields the engine reads (protos/check_view.proto: the same numbers as Envoy's
    attribute_context.proto — source address and principal, the HTTP request's method, headers,
    path and host, the metadata jwt_authn verified); the rest is skipped in C. ≈4× faster than
    reading the wire in Python, ≈50× faster than envoy-data-plane's `CheckRequest.parse`."""
    attributes = view.CheckRequestView.FromString(buf).attributes
    source = attributes.source
    out: dict[str, Any] = {
        "principal": source.principal,
        "source_ip": source.address.socket_address.address,
    }
    if attributes.request.HasField("http"):
        http = attributes.request.http
        out.update(
            http=True,
            method=http.method,
            path=http.path,
            host=http.host,
            headers={key.lower(): value for key, value in http.headers.items()},
        )
    verified = attributes.metadata_context.filter_metadata
    if JWT_AUTHN_NS in verified:
        token = verified[JWT_AUTHN_NS]
        out["jwt_payload"] = json_format.MessageToDict(token).get(JWT_PAYLOAD_KEY)
        out["jwt_raw"] = token.SerializeToString(deterministic=True)
    return CheckAttributes(**out)


def _whole(value: Any) -> Any:
    """JSON-shaped Python from a Struct; whole numbers become ints (claims like `exp`)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


def jwt_claims(attributes: CheckAttributes) -> dict[str, Any] | None:
    """The payload jwt_authn verified (forwarded as metadata context), None without one."""
    claims = _whole(attributes.jwt_payload)
    return claims if isinstance(claims, dict) else None


@functools.lru_cache(maxsize=4096)
def _spiffe_id(principal: str) -> SpiffeId:
    return SpiffeId.parse(principal)


def request_of(attributes: CheckAttributes, workload: str, port: int) -> Request:
    """The engine's view of one Check. The path goes through the engine's normalisation, which
    agrees with the HCM's (already applied) and drops the query."""
    http = attributes.http
    return Request.build(
        workload,
        port,
        identity=_spiffe_id(attributes.principal) if attributes.principal else None,
        source_ip=attributes.source_ip or None,
        method=(attributes.method or None) if http else None,
        path=(attributes.path or None) if http else None,
        host=(attributes.host or None) if http else None,
        headers=attributes.headers if http else None,
        jwt_claims=jwt_claims(attributes) if http else None,
    )
