"""The words decisions are made of, spelled once and imported by every producer and reader:
the evaluator, the translator to Envoy, the readers of what sidecars report, the CLI.

Each is a StrEnum, so it compares equal to (and prints as) the spelling users see in YAML,
JSON and metadata."""

from __future__ import annotations

from enum import Enum, StrEnum


class Action(StrEnum):
    """What an AuthorizationPolicy does when a rule matches (and `Decision.verdict`)."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"


class Mode(StrEnum):
    """Whether a policy's verdicts are enforced or only recorded (dry-run)."""

    ENFORCE = "enforce"
    DRY_RUN = "dry-run"


class Effect(StrEnum):
    """What a request gets, as sidecars report it (metadata, flow log, spans) and as the Mesh
    names its default (`defaultPolicy`)."""

    ALLOW = "allow"
    DENY = "deny"

    @classmethod
    def of(cls, allowed: bool) -> Effect:
        return cls.ALLOW if allowed else cls.DENY


class Direction(StrEnum):
    """Which side decided: the destination's sidecar (ingress) or the source's (egress)."""

    INGRESS = "ingress"
    EGRESS = "egress"


class Cause(StrEnum):
    """What decided a request when no policy rule did (in place of `ns/name`)."""

    DEFAULT_ALLOW = "default:allow"
    DEFAULT_DENY = "default:deny"
    MTLS_REQUIRED = "mtls:required"
    JWT_INVALID = "jwt:invalid"
    AUTHZ_UNAVAILABLE = "authz:unavailable"  # ext_authz enforcement: the engine did not answer
    PORT_UNDECLARED = "port:undeclared"  # a path to a port the destination does not declare


class Peers(Enum):
    """Which peers a field can match — the identity-first rule: identity fields match only
    peers with a verified identity, IP fields only peers without one."""

    ANY = "any"
    IDENTIFIED = "identified"
    PLAINTEXT = "plaintext"
    NONE = "none"  # a source that asks for both can match no peer

    @classmethod
    def needing(cls, identity: bool, plaintext: bool) -> Peers:
        if identity and plaintext:
            return cls.NONE
        return cls.IDENTIFIED if identity else cls.PLAINTEXT if plaintext else cls.ANY

    def admit(self, identified: bool) -> bool:
        """Whether a peer with (`identified`) or without a verified identity can match."""
        if self is Peers.ANY:
            return True
        if self is Peers.NONE:
            return False
        return identified is (self is Peers.IDENTIFIED)
