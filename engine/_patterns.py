"""Value patterns, HTTP path normalisation and an address-prefix index."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from meshwarden.engine._path_templates import PathTemplate, is_template

T = TypeVar("T")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Patterns:
    """A set of values where each is exact, `*` (anything present), `prefix*` or `*suffix`;
    for paths also an Istio-style template (`/api/{*}/items`, `/static/{**}`)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    anything: bool
    text: tuple[str, ...]
    fold_case: bool = False
    templates: tuple[PathTemplate, ...] = ()
    display: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "display", "[" + ", ".join(self.text) + "]")

    @classmethod
    def of(
        cls, values: Iterable[object], fold_case: bool = False, path_templates: bool = False
    ) -> Patterns:
        """`path_templates`: values with `{*}`/`{**}` are templates (validated beforehand)."""
        texts = tuple(str(v).lower() if fold_case else str(v) for v in values)
        templates = tuple(PathTemplate.parse(t) for t in texts if path_templates and is_template(t))
        plain = [t for t in texts if not (path_templates and is_template(t))]
        exact = frozenset(t for t in plain if "*" not in t)
        prefixes = tuple(t[:-1] for t in plain if t.endswith("*") and t != "*")
        suffixes = tuple(t[1:] for t in plain if t.startswith("*") and t != "*")
        return cls(exact, prefixes, suffixes, "*" in plain, texts, fold_case, templates)

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.fold_case:
            value = value.lower()
        if self.anything or value in self.exact:
            return True
        return (
            bool(self.prefixes and value.startswith(self.prefixes))
            or bool(self.suffixes and value.endswith(self.suffixes))
            or bool(self.templates and any(t.matches(value) for t in self.templates))
        )

    def covers(self, other: Patterns) -> bool:
        """True when every value `other` matches is matched here (conservative)."""
        if self.anything:
            return True
        if other.anything:
            return False
        return (
            all(self.matches(e) for e in other.exact)
            and all(any(p.startswith(q) for q in self.prefixes) for p in other.prefixes)
            and all(any(s.endswith(q) for q in self.suffixes) for s in other.suffixes)
            and all(t in self.templates for t in other.templates)
        )

    def __str__(self) -> str:
        return self.display


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def normalize_path(raw: str) -> str:
    """The path as Envoy's HCM sees it with `normalize_path` and `merge_slashes` on.

    Query and fragment are dropped; percent-encoded unreserved characters are decoded and other
    escapes upper-cased (RFC 3986 6.2.2); runs of slashes merge into one; `.` and `..` segments
    are resolved (never above the root). `%2F` stays encoded, as with Envoy's default
    `path_with_escaped_slashes_action: KEEP_UNCHANGED`.
    """
    path = raw.split("#", 1)[0].split("?", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    path = _PERCENT.sub(_decode_unreserved, path)
    path = re.sub(r"/{2,}", "/", path)
    segments: list[str] = []
    parts = path.split("/")[1:]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == ".":
            if last:
                segments.append("")
        elif part == "..":
            if segments:
                segments.pop()
            if last:
                segments.append("")
        else:
            segments.append(part)
    return "/" + "/".join(segments)


class AddressIndex(Generic[T]):
    """Values keyed by CIDR, looked up by address: one hash probe per distinct prefix length,
    so the cost of a lookup does not grow with the number of CIDRs."""

    def __init__(self) -> None:
        self._by_length: dict[tuple[int, int], dict[int, list[T]]] = {}

    def add(self, network: IpNetwork, value: T) -> None:
        key = (network.version, network.prefixlen)
        bucket = self._by_length.setdefault(key, {})
        bucket.setdefault(int(network.network_address), []).append(value)

    def lookup(self, address: IpAddress) -> Iterator[T]:
        as_int = int(address)
        bits = address.max_prefixlen
        for (version, length), bucket in self._by_length.items():
            if version != address.version:
                continue
            masked = as_int >> (bits - length) << (bits - length) if length else 0
            yield from bucket.get(masked, ())

    def values(self) -> Iterator[T]:
        """Every value stored, in no particular order."""
        for bucket in self._by_length.values():
            for values in bucket.values():
                yield from values

    def __bool__(self) -> bool:
        return bool(self._by_length)


def parse_network(text: str) -> IpNetwork:
    """A CIDR, or a single address as a host network."""
    return ipaddress.ip_network(text, strict=False)


def parse_address(text: str) -> IpAddress:
    return ipaddress.ip_address(text)


def in_networks(address: IpAddress, networks: Iterable[IpNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)
