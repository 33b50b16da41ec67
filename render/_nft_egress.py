"""The outbound half of `table inet meshwarden`: an `output` chain for the node's own sockets
and a `forward` chain for what is routed through it (containers), rendered only when the node
holds something back.

Per packet: one lookup of the sender (`meta skuid` for sockets, `ip saddr` for routed packets)
in a verdict map, then one lookup of (destination . protocol . port) in the sender's interval
set. A refused tcp connection gets a reset and anything else an ICMP "administratively
prohibited", so the application fails at once instead of waiting for a timeout.
"""

from __future__ import annotations

from meshwarden.render._egress import NodeEgress, SourceEgress
from meshwarden.render._space import EgressEntry, IpAddress

# ICMP a closed host still needs: errors (path MTU discovery) and IPv6 neighbour discovery.
ICMP_NEEDED = "destination-unreachable, time-exceeded, parameter-problem"
ICMPV6_NEEDED = (
    "destination-unreachable, packet-too-big, time-exceeded, parameter-problem, "
    "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"
)
_KIND = {4: "ipv4_addr", 6: "ipv6_addr"}
_IP = {4: "ip", 6: "ip6"}


def egress_origins(egress: NodeEgress) -> list[str]:
    """Header lines: who is filtered by which key, and who cannot be."""
    lines = [f"#   egress of uid {uid}: {egress.sources[i].name}" for uid, i in _uids(egress)]
    lines += [f"#   egress from {a}: {egress.sources[i].name}" for a, i in _routed(egress)]
    if egress.host is not None:
        lines.append(f"#   egress of every other socket: {egress.host.name} (defaultEgress: deny)")
    lines += [
        f"#   egress NOT held back for {ref}: no unix:uid selector and no routed address"
        for ref in egress.unkeyed
    ]
    return lines


def egress_sets(egress: NodeEgress) -> list[str]:
    """The sets and maps the outbound chains look up."""
    lines: list[str] = []
    for name, source in _named(egress):
        for version in (4, 6):
            lines += _entry_set(f"{name}_v{version}", version, source.allowed)
    if _uid_map(egress):
        elements = ", ".join(f"{uid} : {verdict}" for uid, verdict in _uid_map(egress))
        lines += ["\tmap egress_uids {", "\t\ttypeof meta skuid : verdict"]
        lines += [f"\t\telements = {{ {elements} }}", "\t}"]
    for version in (4, 6):
        routed = [(a, i) for a, i in _routed(egress) if a.version == version]
        if routed:
            elements = ", ".join(f"{a} : jump egress_{i + 1}" for a, i in routed)
            lines += [f"\tmap egress_from_v{version} {{", f"\t\ttype {_KIND[version]} : verdict"]
            lines += [f"\t\telements = {{ {elements} }}", "\t}"]
        bypass = [f"{a} . {port}" for a, port in egress.bypass if a.version == version]
        if bypass:
            lines += [f"\tset bypass_v{version} {{", f"\t\ttype {_KIND[version]} . inet_service"]
            lines += ["\t\telements = { " + ", ".join(bypass) + " }", "\t}"]
    return lines


def egress_chains(egress: NodeEgress) -> list[str]:
    """One chain per sender, then the `output` and `forward` base chains."""
    if egress.empty:
        return []
    lines: list[str] = []
    for name, source in _named(egress):
        lines += _sender_chain(name, source)
    refuse_bypass = [
        f"\t\t{_IP[v]} daddr . tcp dport @bypass_v{v} reject with tcp reset"
        for v in (4, 6)
        if any(a.version == v for a, _ in egress.bypass)
    ]
    lines += [
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy accept;",
        '\t\toifname "lo" accept',
        "\t\tct state established,related accept",
        *refuse_bypass,
    ]
    if _uid_map(egress):
        lines.append("\t\tmeta skuid vmap @egress_uids")
    if egress.host is not None:
        lines.append("\t\tjump host_egress")
    lines += [
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
    ]
    lines += ["\t\tct state established,related accept", *refuse_bypass]
    for version in (4, 6):
        if any(a.version == version for a, _ in _routed(egress)):
            lines.append(f"\t\t{_IP[version]} saddr vmap @egress_from_v{version}")
    return [*lines, "\t}"]


def _uids(egress: NodeEgress) -> list[tuple[int, int]]:
    return [(uid, i) for uid, i in egress.uids if i is not None]


def _routed(egress: NodeEgress) -> list[tuple[IpAddress, int]]:
    return [(a, i) for a, i in egress.addresses if i is not None]


def _uid_map(egress: NodeEgress) -> list[tuple[int, str]]:
    """uid -> verdict: the sender's chain, or accept for a workload that may send anywhere
    when the Host's chain would otherwise hold it back."""
    return [
        (uid, f"jump egress_{i + 1}" if i is not None else "accept")
        for uid, i in egress.uids
        if i is not None or egress.host is not None
    ]


def _named(egress: NodeEgress) -> list[tuple[str, SourceEgress]]:
    named = [(f"egress_{i + 1}", s) for i, s in enumerate(egress.sources)]
    if egress.host is not None:
        named.append(("host_egress", egress.host))
    return named


def _entry_set(name: str, version: int, allowed: tuple[EgressEntry, ...]) -> list[str]:
    entries = [e for e in allowed if e.version == version]
    if not entries:
        return []
    elements = ", ".join(f"{e.destination} . {e.protocol} . {e.ports}" for e in entries)
    return [
        f"\tset {name} {{",
        f"\t\ttype {_KIND[version]} . inet_proto . inet_service",
        "\t\tflags interval",
        f"\t\telements = {{ {elements} }}",
        "\t}",
    ]


def _sender_chain(name: str, source: SourceEgress) -> list[str]:
    lines = [f"\tchain {name} {{", f"\t\t# {source.name}"]
    for version in (4, 6):
        if any(e.version == version for e in source.allowed):
            lines.append(
                f"\t\t{_IP[version]} daddr . meta l4proto . th dport @{name}_v{version} accept"
            )
    return [
        *lines,
        f"\t\ticmp type {{ {ICMP_NEEDED} }} accept",
        f"\t\ticmpv6 type {{ {ICMPV6_NEEDED} }} accept",
        "\t\tmeta l4proto tcp reject with tcp reset",
        "\t\treject with icmpx admin-prohibited",
        "\t}",
    ]
