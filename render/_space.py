"""Destination space of egress: (address, protocol, port) cut into disjoint boxes.

A verdict over destinations is a function of (address, protocol, port). Every rule draws its
boundaries from CIDRs and port ranges, so the space falls into atoms — address intervals and
port intervals between consecutive boundaries — on which the verdict cannot change. Deciding one
representative per atom decides the whole atom; adjacent atoms with the same verdict are then
merged. The result is a list of disjoint `EgressEntry` boxes, which nftables takes as elements
of one interval set (elements of a concatenated interval set must not overlap).
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PROTOCOLS = ("tcp", "udp", "sctp")  # what egress decides; other protocols are not rules' business
PORTS = (1, 65535)
_TOP = {4: 1 << 32, 6: 1 << 128}
# What one address interval lets through: (protocol, low port, high port), sorted and disjoint.
Opening = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class EgressEntry:
    """Packets to addresses `first`-`last`, `protocol` ports `low`-`high`, may leave."""

    first: IpAddress
    last: IpAddress
    protocol: str
    low: int
    high: int

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def ports(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"

    @property
    def destination(self) -> str:
        """`10.0.0.1` or `10.0.0.0-10.0.0.255` (nftables and iprange syntax)."""
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    @property
    def networks(self) -> list[IpNetwork]:
        """The addresses as CIDRs (what the cloud providers take)."""
        return list(ipaddress.summarize_address_range(self.first, self.last))


def network_cuts(networks: Iterable[IpNetwork]) -> list[tuple[int, int]]:
    """(family, boundary) pairs: where each network starts and where it ends (exclusive)."""
    cuts: list[tuple[int, int]] = []
    for net in networks:
        cuts.append((net.version, int(net.network_address)))
        cuts.append((net.version, int(net.broadcast_address) + 1))
    return cuts


def address_cuts(addresses: Iterable[IpAddress]) -> list[tuple[int, int]]:
    return [(a.version, int(a) + k) for a in addresses for k in (0, 1)]


def port_atoms(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The port range 1-65535 cut at every boundary of `ranges`."""
    cuts = {PORTS[0], PORTS[1] + 1}
    for low, high in ranges:
        cuts.update((low, high + 1))
    points = sorted(c for c in cuts if PORTS[0] <= c <= PORTS[1] + 1)
    return [(low, next_low - 1) for low, next_low in pairwise(points)]


def opening(atoms: Sequence[tuple[int, int]], allowed: Callable[[str, int], bool]) -> Opening:
    """What `allowed(protocol, port)` lets through, deciding one port per atom."""
    found: list[tuple[str, int, int]] = []
    for protocol in PROTOCOLS:
        for low, high in atoms:
            if not allowed(protocol, low):
                continue
            last = found[-1] if found else None
            if last is not None and last[0] == protocol and last[2] + 1 == low:
                found[-1] = (protocol, last[1], high)
            else:
                found.append((protocol, low, high))
    return tuple(found)


def address_atoms(cuts: Iterable[tuple[int, int]], version: int) -> list[tuple[int, int]]:
    """The whole address family cut at `cuts`: inclusive (first, last) integer intervals."""
    points = {0, _TOP[version]} | {v for fam, v in cuts if fam == version and v <= _TOP[version]}
    ordered = sorted(points)
    return [(low, next_low - 1) for low, next_low in pairwise(ordered)]


def entries(
    cuts: Iterable[tuple[int, int]],
    outside: Callable[[IpAddress], Opening],
    members: Mapping[IpAddress, Opening],
) -> tuple[EgressEntry, ...]:
    """Disjoint entries for the whole address space: each atom between `cuts` opens what
    `outside` says for its first address, except the single addresses in `members`, which open
    what they map to. Adjacent intervals with the same opening are merged."""
    cuts = list(cuts)
    intervals: list[tuple[int, int, int, Opening]] = []
    for version in (4, 6):
        own = {int(a): opened for a, opened in members.items() if a.version == version}
        base = address_atoms(cuts, version)  # the outside opening is the same on each of these
        starts = [first for first, _ in base]
        memo: dict[int, Opening] = {}
        for first, last in address_atoms([*cuts, *address_cuts(members)], version):
            if first == last and first in own:
                intervals.append((version, first, last, own[first]))
                continue
            k = bisect_right(starts, first) - 1
            if k not in memo:
                memo[k] = outside(_address(version, first))
            intervals.append((version, first, last, memo[k]))
    return _boxes(intervals)


def _boxes(intervals: list[tuple[int, int, int, Opening]]) -> tuple[EgressEntry, ...]:
    merged: list[tuple[int, int, int, Opening]] = []
    for item in intervals:
        version, first, last, opened = item
        if merged:
            m_version, m_first, m_last, m_opened = merged[-1]
            if (m_version, m_last + 1, m_opened) == (version, first, opened):
                merged[-1] = (version, m_first, last, opened)
                continue
        merged.append(item)
    return tuple(
        EgressEntry(_address(version, first), _address(version, last), protocol, low, high)
        for version, first, last, opened in merged
        for protocol, low, high in opened
    )


def _address(version: int, value: int) -> IpAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def covers_everything(entries: Sequence[EgressEntry]) -> bool:
    """Whether the entries open every address, protocol and port."""
    full = {
        (v, p)
        for e in entries
        for v in (e.version,)
        for p in (e.protocol,)
        if int(e.first) == 0 and int(e.last) == _TOP[v] - 1 and (e.low, e.high) == PORTS
    }
    return full == {(v, p) for v in (4, 6) for p in PROTOCOLS}
