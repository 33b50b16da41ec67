"""A node's filter as one nftables table, `table inet meshwarden`, replaced atomically.

The file declares the table, deletes it and defines it again: `nft -f` runs the whole file as one
transaction, so the kernel switches from the old table to the new one at once or, on any error,
keeps the old one. Per-packet cost does not grow with the rules: one verdict-map lookup on
(protocol . port), then at most one interval-set lookup on the source address. Outbound packets
(the `output` and `forward` chains, see `_nft_egress`) cost one lookup of the sender and one of
(destination . protocol . port).
"""

from __future__ import annotations

from meshwarden.render._filter import IpNetwork, NodeFilter, PortRule
from meshwarden.render._nft_egress import (
    ICMP_NEEDED,
    ICMPV6_NEEDED,
    egress_chains,
    egress_origins,
    egress_sets,
)

TABLE = "inet meshwarden"


def render_nftables(nf: NodeFilter) -> str:
    """An `nft -f` file replacing `table inet meshwarden` in one transaction."""
    source_sets = _source_sets(nf)
    lines = [
        f"# meshwarden: packet filter of node {nf.node} (mesh version {nf.version}).",
        "# Generated; do not edit. Apply atomically with: nft -f FILE",
        *_origins(nf),
        *egress_origins(nf.egress),
        f"table {TABLE}",
        f"delete table {TABLE}",
        f"table {TABLE} {{",
    ]
    for name, networks in source_sets.items():
        lines += _address_set(f"{name}_v4", "ipv4_addr", _family(networks, 4))
        lines += _address_set(f"{name}_v6", "ipv6_addr", _family(networks, 6))
    if nf.host is not None and nf.closed:
        lines += _address_set("closed_v4", "ipv4_addr", _family(nf.closed, 4))
        lines += _address_set("closed_v6", "ipv6_addr", _family(nf.closed, 6))
    lines += egress_sets(nf.egress)
    lines += _ports_map(nf, source_sets)
    for name, networks in source_sets.items():
        lines += _source_chain(name, networks)
    lines += _input_chain(nf)
    lines += egress_chains(nf.egress)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _origins(nf: NodeFilter) -> list[str]:
    return [f"#   {r.protocol} {r.ports}: {'; '.join(r.origins)}" for r in nf.ports]


def _source_sets(nf: NodeFilter) -> dict[str, tuple[IpNetwork, ...]]:
    """One named set per distinct list of sources (ports sharing sources share a set)."""
    found: dict[tuple[IpNetwork, ...], str] = {}
    for rule in nf.ports:
        if rule.sources and not rule.is_open and rule.sources not in found:
            found[rule.sources] = f"sources_{len(found) + 1}"
    return {name: networks for networks, name in found.items()}


def _family(networks: tuple[IpNetwork, ...], version: int) -> list[IpNetwork]:
    return [n for n in networks if n.version == version]


def _address_set(name: str, kind: str, networks: list[IpNetwork]) -> list[str]:
    if not networks:
        return []
    elements = "\t\telements = { " + ", ".join(str(n) for n in networks) + " }"
    return [f"\tset {name} {{", f"\t\ttype {kind}", "\t\tflags interval", elements, "\t}"]


def _verdict(rule: PortRule, names: dict[tuple[IpNetwork, ...], str]) -> str:
    if rule.is_open:
        return "accept"
    if not rule.sources:
        return "drop"
    return f"jump {names[rule.sources]}"


def _ports_map(nf: NodeFilter, source_sets: dict[str, tuple[IpNetwork, ...]]) -> list[str]:
    names = {networks: name for name, networks in source_sets.items()}
    lines = ["\tmap ports {", "\t\ttype inet_proto . inet_service : verdict", "\t\tflags interval"]
    if nf.ports:
        elements = [f"{r.protocol} . {r.ports} : {_verdict(r, names)}" for r in nf.ports]
        lines.append("\t\telements = { " + ", ".join(elements) + " }")
    return [*lines, "\t}"]


def _source_chain(name: str, networks: tuple[IpNetwork, ...]) -> list[str]:
    lines = [f"\tchain {name} {{"]
    if _family(networks, 4):
        lines.append(f"\t\tip saddr @{name}_v4 accept")
    if _family(networks, 6):
        lines.append(f"\t\tip6 saddr @{name}_v6 accept")
    return [*lines, "\t\tdrop", "\t}"]


def _input_chain(nf: NodeFilter) -> list[str]:
    lines = [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        '\t\tiifname "lo" accept',
        "\t\tct state established,related accept",
        "\t\tmeta l4proto . th dport vmap @ports",
    ]
    if nf.host is not None and nf.closed:
        lines += [
            f"\t\ticmp type {{ {ICMP_NEEDED} }} accept",
            f"\t\ticmpv6 type {{ {ICMPV6_NEEDED} }} accept",
        ]
        if _family(nf.closed, 4):
            lines.append("\t\tip daddr @closed_v4 drop")
        if _family(nf.closed, 6):
            lines.append("\t\tip6 daddr @closed_v6 drop")
    return [*lines, "\t}"]
