"""One request as the authorization engine sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshwarden.engine._patterns import IpAddress, normalize_path, parse_address
from meshwarden.engine._spiffe import SpiffeId


@dataclass(frozen=True, slots=True)
class Request:
    """A request to one destination workload and port.

    `identity` is the peer's verified SPIFFE ID (None: plaintext peer); `source_ip` is the direct
    peer address. HTTP attributes are None on tcp ports. `path` is already normalised.
    `jwt_claims` are the claims of a token found in a configured header, None without a token.
    `protocol` is the transport (tcp, udp or sctp; http and grpc ride on tcp).
    """

    destination: str
    port: int
    identity: str | None = None
    source_ip: IpAddress | None = None
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    jwt_claims: Mapping[str, Any] | None = None
    identity_namespace: str | None = None
    protocol: str = "tcp"

    @classmethod
    def build(
        cls,
        destination: str,
        port: int,
        *,
        identity: str | SpiffeId | None = None,
        source_ip: str | IpAddress | None = None,
        method: str | None = None,
        path: str | None = None,
        host: str | None = None,
        headers: Mapping[str, str] | None = None,
        jwt_claims: Mapping[str, Any] | None = None,
        protocol: str = "tcp",
    ) -> Request:
        spiffe_id = SpiffeId.parse(identity) if isinstance(identity, str) else identity
        address = parse_address(source_ip) if isinstance(source_ip, str) else source_ip
        return cls(
            destination=destination,
            port=port,
            identity=str(spiffe_id) if spiffe_id else None,
            source_ip=address,
            method=method,
            path=normalize_path(path) if path is not None else None,
            host=host,
            headers={k.lower(): v for k, v in (headers or {}).items()},
            jwt_claims=jwt_claims,
            identity_namespace=spiffe_id.namespace() if spiffe_id else None,
            protocol=protocol,
        )


def claim(claims: Mapping[str, Any] | None, path: str) -> Any:
    """The claim at a dotted path (`realm.role`), or None when absent."""
    if claims is None:
        return None
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def claim_strings(value: Any) -> list[str]:
    """A claim's values as strings: each element of a list, JSON spelling for scalars."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif item is not None and not isinstance(item, dict | list):
            out.append(str(item))
    return out
