"""Rules compiled for matching: each part answers `mismatch(request)` — None when it matches,
otherwise the reason it does not (the same code decides and explains)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshwarden.engine._conditions import CompiledCondition, PortRanges
from meshwarden.engine._diagnostics import Location
from meshwarden.engine._model import JwtConstraint, Operation, Source
from meshwarden.engine._patterns import (
    IpAddress,
    IpNetwork,
    Patterns,
    in_networks,
    parse_network,
)
from meshwarden.engine._request import Request, claim, claim_strings
from meshwarden.engine._vocabulary import Peers


def _ports(values: Sequence[int | str] | None) -> PortRanges | None:
    return None if values is None else PortRanges.of(values)


def patterns_of(values: Sequence[object] | None, fold_case: bool = False) -> Patterns | None:
    return None if values is None else Patterns.of(values, fold_case)


def _paths(values: Sequence[str] | None) -> Patterns | None:
    return None if values is None else Patterns.of(values, path_templates=True)


def networks_of(values: Sequence[str] | None) -> tuple[IpNetwork, ...] | None:
    return None if values is None else tuple(parse_network(v) for v in values)


@dataclass(frozen=True, slots=True)
class CompiledJwt:
    issuers: Patterns | None
    subjects: Patterns | None
    claims: tuple[tuple[str, Patterns], ...]

    @classmethod
    def of(cls, jwt: JwtConstraint) -> CompiledJwt:
        claims = tuple((k, Patterns.of(v)) for k, v in (jwt.claims or {}).items())
        return cls(patterns_of(jwt.issuers), patterns_of(jwt.subjects), claims)

    def mismatch(self, claims: Any) -> str | None:
        if claims is None:
            return "no verified JWT"
        if self.issuers and not self.issuers.matches(_first(claims.get("iss"))):
            return f"JWT issuer {claims.get('iss')!r} not in {self.issuers}"
        if self.subjects and not self.subjects.matches(_first(claims.get("sub"))):
            return f"JWT subject {claims.get('sub')!r} not in {self.subjects}"
        for path, wanted in self.claims:
            values = claim_strings(claim(claims, path))
            if not any(wanted.matches(v) for v in values):
                return f"JWT claim {path}={claim(claims, path)!r} not in {wanted}"
        return None


def _first(value: Any) -> str | None:
    strings = claim_strings(value) if value is not None else []
    return strings[0] if strings else None


@dataclass(frozen=True, slots=True)
class CompiledSource:
    """One `from` source (identities, namespaces, JWT, IP blocks) compiled for matching."""

    identities: Patterns | None
    not_identities: Patterns | None
    workloads: frozenset[str] | None
    namespaces: Patterns | None
    jwt: CompiledJwt | None
    ip_blocks: tuple[IpNetwork, ...] | None
    not_ip_blocks: tuple[IpNetwork, ...] | None
    needs_identity: bool = field(init=False, compare=False)
    needs_plaintext: bool = field(init=False, compare=False)
    peers: Peers = field(init=False, compare=False)  # the identity-first rule for this source

    def __post_init__(self) -> None:
        identity_fields = (self.identities, self.not_identities, self.workloads, self.namespaces)
        identity = any(f is not None for f in identity_fields)
        plaintext = self.ip_blocks is not None or self.not_ip_blocks is not None
        object.__setattr__(self, "needs_identity", identity)
        object.__setattr__(self, "needs_plaintext", plaintext)
        object.__setattr__(self, "peers", Peers.needing(identity, plaintext))

    @classmethod
    def of(cls, source: Source, workload_ids: frozenset[str] | None) -> CompiledSource:
        return cls(
            patterns_of(source.identities),
            patterns_of(source.not_identities),
            workload_ids,
            patterns_of(source.namespaces),
            CompiledJwt.of(source.jwt) if source.jwt else None,
            networks_of(source.ip_blocks),
            networks_of(source.not_ip_blocks),
        )

    def mismatch(self, req: Request) -> str | None:
        identity = req.identity
        if not self.peers.admit(identity is not None):
            if identity is None:
                return "peer has no verified identity (identity fields match only mTLS peers)"
            return "ipBlocks/notIpBlocks match only peers without an identity"
        if identity is not None:
            reason = identity_mismatch(self, identity, req.identity_namespace)
            if reason:
                return reason
        if self.jwt is not None:
            reason = self.jwt.mismatch(req.jwt_claims)
            if reason:
                return reason
        return self._ip_mismatch(req)

    def _ip_mismatch(self, req: Request) -> str | None:
        return ip_mismatch(self, req.source_ip, "source")


class PeerFields(Protocol):
    """The identity and IP fields a `from` source and an egress `to` destination share."""

    @property
    def identities(self) -> Patterns | None: ...
    @property
    def not_identities(self) -> Patterns | None: ...
    @property
    def workloads(self) -> frozenset[str] | None: ...
    @property
    def namespaces(self) -> Patterns | None: ...
    @property
    def ip_blocks(self) -> tuple[IpNetwork, ...] | None: ...
    @property
    def not_ip_blocks(self) -> tuple[IpNetwork, ...] | None: ...


def identity_mismatch(fields: PeerFields, identity: str, namespace: str | None) -> str | None:
    """Why a verified `identity` (of namespace `namespace`) fails the identity fields, or None."""
    if fields.identities is not None and not fields.identities.matches(identity):
        return f"identity {identity} not in identities {fields.identities}"
    if fields.not_identities is not None and fields.not_identities.matches(identity):
        return f"identity {identity} is in notIdentities {fields.not_identities}"
    if fields.workloads is not None and identity not in fields.workloads:
        return f"identity {identity} is not one of the selected workloads"
    if fields.namespaces is not None and not fields.namespaces.matches(namespace):
        return f"namespace {namespace} not in namespaces {fields.namespaces}"
    return None


def ip_mismatch(fields: PeerFields, ip: IpAddress | None, side: str) -> str | None:
    """Why the `side` ("source"/"destination") address fails ipBlocks/notIpBlocks, or None."""
    if fields.ip_blocks is not None and (ip is None or not in_networks(ip, fields.ip_blocks)):
        return f"{side} IP {ip or 'unknown'} not in ipBlocks"
    if fields.not_ip_blocks is not None and (ip is None or in_networks(ip, fields.not_ip_blocks)):
        return f"{side} IP {ip or 'unknown'} is in notIpBlocks"
    return None


@dataclass(frozen=True, slots=True)
class CompiledOperation:
    """One `to` operation (ports, methods, paths, hosts) compiled for matching."""

    ports: PortRanges | None
    not_ports: PortRanges | None
    methods: Patterns | None
    not_methods: Patterns | None
    paths: Patterns | None
    not_paths: Patterns | None
    hosts: Patterns | None
    not_hosts: Patterns | None
    protocols: frozenset[str] | None = None  # transports; None: any
    # (request attribute, positive patterns, negative patterns) for the HTTP fields that are set
    http_checks: tuple[tuple[str, Patterns | None, Patterns | None], ...] = field(
        init=False, compare=False
    )

    def __post_init__(self) -> None:
        fields = (
            ("method", self.methods, self.not_methods),
            ("path", self.paths, self.not_paths),
            ("host", self.hosts, self.not_hosts),
        )
        checks = tuple(f for f in fields if f[1] is not None or f[2] is not None)
        object.__setattr__(self, "http_checks", checks)

    @classmethod
    def of(cls, op: Operation) -> CompiledOperation:
        return cls(
            _ports(op.ports),
            _ports(op.not_ports),
            patterns_of(op.methods),
            patterns_of(op.not_methods),
            _paths(op.paths),
            _paths(op.not_paths),
            patterns_of(op.hosts, fold_case=True),
            patterns_of(op.not_hosts, fold_case=True),
            None if op.protocols is None else frozenset(op.protocols),
        )

    @property
    def is_http(self) -> bool:
        return any(
            f is not None
            for f in (
                self.methods,
                self.not_methods,
                self.paths,
                self.not_paths,
                self.hosts,
                self.not_hosts,
            )
        )

    def admits_port(self, port: int, protocol: str = "tcp") -> bool:
        """Whether `ports`/`notPorts` and `protocols` let this port through (by default a
        sidecar's listener port, which is tcp)."""
        return (
            (self.ports is None or self.ports.contain(port))
            and (self.not_ports is None or not self.not_ports.contain(port))
            and (self.protocols is None or protocol in self.protocols)
        )

    def mismatch(self, req: Request) -> str | None:
        if self.protocols is not None and req.protocol not in self.protocols:
            return f"protocol {req.protocol} not in protocols [{', '.join(sorted(self.protocols))}]"
        if self.ports is not None and not self.ports.contain(req.port):
            return f"port {req.port} not in ports"
        if self.not_ports is not None and self.not_ports.contain(req.port):
            return f"port {req.port} is in notPorts"
        for what, positive, negative in self.http_checks:
            value = getattr(req, what)
            if positive is not None and not positive.matches(value):
                return f"{what} {value} not in {what}s {positive}"
            if negative is not None and negative.matches(value):
                return f"{what} {value} is in not{what.title()}s {negative}"
        return None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule of one policy, with its provenance (`ns/name#index`)."""

    policy: str
    index: int
    sources: tuple[CompiledSource, ...] | None
    operations: tuple[CompiledOperation, ...] | None
    conditions: tuple[CompiledCondition, ...]
    location: Location

    @property
    def name(self) -> str:
        return f"{self.policy}#{self.index}"

    def admits(self, port: int, method: str | None, protocol: str = "tcp") -> bool:
        """False when no operation of the rule can apply to this port, method and protocol."""
        if not self.operations:
            return True
        return any(
            op.admits_port(port, protocol)
            and (op.methods is None or op.methods.matches(method))
            and (op.not_methods is None or not op.not_methods.matches(method))
            for op in self.operations
        )

    def mismatch(self, req: Request) -> str | None:
        """Why this rule does not match `req` (None: it matches)."""
        return self._check(req, explain=True)

    def matches(self, req: Request) -> bool:
        return self._check(req, explain=False) is None

    def _check(self, req: Request, explain: bool) -> str | None:
        if self.sources:
            reason = _first_match(self.sources, req, explain)
            if reason:
                return "from: " + reason
        if self.operations:
            reason = _first_match(self.operations, req, explain)
            if reason:
                return "to: " + reason
        for cond in self.conditions:
            why = cond.mismatch(req)
            if why:
                return "when: " + why
        return None


def _first_match(
    alternatives: Sequence[CompiledSource | CompiledOperation], req: Request, explain: bool
) -> str:
    """'' when one alternative matches (they are ORed), else every reason joined (or just
    "no match" when no explanation is wanted)."""
    if not explain:
        for alternative in alternatives:
            if alternative.mismatch(req) is None:
                return ""
        return "no match"
    reasons: list[str] = []
    for alternative in alternatives:
        reason = alternative.mismatch(req)
        if reason is None:
            return ""
        reasons.append(reason if len(alternatives) == 1 else f"[{len(reasons)}] {reason}")
    return "; ".join(reasons)
