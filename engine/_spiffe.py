"""SPIFFE IDs and trust domains, parsed strictly per the SPIFFE ID specification.

Rules enforced (SPIFFE-ID spec, section 2):
- scheme is exactly ``spiffe://`` (lowercase);
- the trust domain is non-empty, at most 255 characters of ``[a-z0-9._-]`` (lowercase only),
  with no userinfo, port, query or fragment;
- the path is empty or ``/``-separated segments of ``[a-zA-Z0-9._-]``; no empty segment
  (so no ``//`` and no trailing ``/``), no ``.`` or ``..`` segment, no percent-encoding;
- the whole ID is at most 2048 bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
MAX_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255
_TD_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._-]+")


class SpiffeIdError(ValueError):
    """A string that is not a valid SPIFFE ID or trust domain; the message says why and how."""


def _check_trust_domain(name: str) -> None:
    if not name:
        raise SpiffeIdError("trust domain is empty")
    if len(name) > MAX_TRUST_DOMAIN_LENGTH:
        raise SpiffeIdError(
            f"trust domain is {len(name)} characters long; the limit is {MAX_TRUST_DOMAIN_LENGTH}"
        )
    if name != name.lower() and _TD_CHARS.fullmatch(name.lower()):
        raise SpiffeIdError(f"trust domain {name!r} must be lowercase (use {name.lower()!r})")
    if ":" in name:
        raise SpiffeIdError(f"trust domain {name!r} must not contain a port or userinfo")
    if "@" in name:
        raise SpiffeIdError(f"trust domain {name!r} must not contain userinfo")
    if not _TD_CHARS.fullmatch(name):
        bad = sorted({c for c in name if not _TD_CHARS.fullmatch(c)})
        raise SpiffeIdError(
            f"trust domain {name!r} contains {''.join(bad)!r}; "
            "only lowercase letters, digits, '.', '-' and '_' are allowed"
        )


def _check_path(path: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise SpiffeIdError(f"path {path!r} must start with '/'")
    for segment in path[1:].split("/"):
        if segment == "":
            raise SpiffeIdError("path has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise SpiffeIdError(f"path segment {segment!r} is not allowed (no dot segments)")
        if "%" in segment:
            raise SpiffeIdError(
                f"path segment {segment!r} is percent-encoded, which SPIFFE forbids"
            )
        if not _SEGMENT_CHARS.fullmatch(segment):
            bad = sorted({c for c in segment if not _SEGMENT_CHARS.fullmatch(c)})
            raise SpiffeIdError(
                f"path segment {segment!r} contains {''.join(bad)!r}; only letters, digits, "
                "'.', '-' and '_' are allowed"
            )


def namespace_of(spiffe_id: str) -> str | None:
    """`<ns>` of a valid `spiffe://td/ns/<ns>[/...]` ID string, else None (no re-parsing)."""
    parts = spiffe_id.split("/", 5)
    return parts[4] if len(parts) >= 5 and parts[3] == "ns" else None


@dataclass(frozen=True, slots=True, order=True)
class TrustDomain:
    """A SPIFFE trust domain such as ``example.org``."""

    name: str

    def __post_init__(self) -> None:
        _check_trust_domain(self.name)

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Accept ``example.org`` or ``spiffe://example.org``."""
        if text.startswith(SCHEME):
            spiffe_id = SpiffeId.parse(text)
            if spiffe_id.path:
                raise SpiffeIdError(f"{text!r} is a SPIFFE ID with a path, not a trust domain")
            return spiffe_id.trust_domain
        return cls(text)

    def id_string(self) -> str:
        """``spiffe://example.org``: the form used as a key in SPIFFE bundles."""
        return SCHEME + self.name

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A parsed, valid SPIFFE ID: ``spiffe://<trust domain><path>``."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        _check_path(self.path)
        if len(str(self)) > MAX_ID_LENGTH:
            raise SpiffeIdError(f"SPIFFE ID is longer than {MAX_ID_LENGTH} bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if not isinstance(text, str):
            raise SpiffeIdError(f"a SPIFFE ID must be a string, got {type(text).__name__}")
        if len(text.encode()) > MAX_ID_LENGTH:
            raise SpiffeIdError(f"SPIFFE ID is longer than {MAX_ID_LENGTH} bytes")
        if not text.startswith(SCHEME):
            if text.lower().startswith(SCHEME):
                raise SpiffeIdError(f"scheme must be lowercase 'spiffe://' in {text!r}")
            raise SpiffeIdError(f"{text!r} does not start with 'spiffe://'")
        rest = text[len(SCHEME) :]
        if "?" in rest or "#" in rest:
            raise SpiffeIdError(f"{text!r} must not contain a query or fragment")
        td, slash, path = rest.partition("/")
        return cls(TrustDomain(td), slash + path)

    @classmethod
    def of(cls, trust_domain: TrustDomain | str, path: str) -> SpiffeId:
        td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain(trust_domain)
        return cls(td, path)

    def __str__(self) -> str:
        return SCHEME + self.trust_domain.name + self.path

    def namespace(self) -> str | None:
        """The Kubernetes-style namespace of ``spiffe://td/ns/<ns>/...`` IDs, else None."""
        return namespace_of(str(self))
