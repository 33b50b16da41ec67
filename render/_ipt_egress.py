"""The outbound half of the iptables form: which packets may leave, as linear rules.

- Default form: a second chain, `MESHWARDEN-OUT`, for OUTPUT (hook it once:
  `iptables -C OUTPUT -j MESHWARDEN-OUT || iptables -I OUTPUT -j MESHWARDEN-OUT`). Senders are
  the node's sockets, keyed by uid (`-m owner --uid-owner`); the Host's own traffic follows
  under `defaultEgress: deny`.
- DOCKER-USER form: rules for packets from the containers (`-i BRIDGE`), keyed by their source
  address, in the same chain.

One rule per allowed (destination range, protocol, ports) of each sender, then a REJECT for
the sender's other tcp, udp and sctp (and everything but the ICMP a host needs).
"""

from __future__ import annotations

from meshwarden.render._egress import NodeEgress, SourceEgress

OUT_CHAIN = "MESHWARDEN-OUT"
# ICMP a host still needs: errors (path MTU discovery) and IPv6 neighbour discovery.
_ICMP = {
    4: ("-p icmp --icmp-type", ("destination-unreachable", "time-exceeded", "parameter-problem")),
    6: (
        "-p ipv6-icmp --icmpv6-type",
        (
            "destination-unreachable",
            "packet-too-big",
            "time-exceeded",
            "parameter-problem",
            "router-solicitation",
            "router-advertisement",
            "neighbour-solicitation",
            "neighbour-advertisement",
        ),
    ),
}
_PROHIBITED = {4: "icmp-admin-prohibited", 6: "icmp6-adm-prohibited"}


def output_rules(egress: NodeEgress, version: int) -> list[str]:
    """The body of MESHWARDEN-OUT ([] when the node holds nothing back)."""
    if egress.empty:
        return []
    rules = ["-o lo -j RETURN", "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    rules += bypass_rules(egress, version)
    for uid, index in egress.uids:
        owner = f"-m owner --uid-owner {uid} "
        if index is not None:
            rules += sender_rules(owner, egress.sources[index], version)
        elif egress.host is not None:
            rules.append(owner + "-j RETURN")  # may send anywhere: not the Host's traffic
    if egress.host is not None:
        rules += sender_rules("", egress.host, version)
    return rules


def routed_rules(egress: NodeEgress, version: int, interface: str) -> list[str]:
    """DOCKER-USER rules for packets from containers on `interface`."""
    rules = [f"-i {interface} {rule}" for rule in bypass_rules(egress, version)]
    for address, index in egress.addresses:
        if address.version == version and index is not None:
            key = f"-i {interface} -s {address} "
            rules += sender_rules(key, egress.sources[index], version)
    return rules


def bypass_rules(egress: NodeEgress, version: int) -> list[str]:
    return [
        f"-p tcp -d {address} --dport {port} -j REJECT --reject-with tcp-reset"
        for address, port in egress.bypass
        if address.version == version
    ]


def sender_rules(key: str, source: SourceEgress, version: int) -> list[str]:
    """What `key` (an owner or source match) may send; the rest of its packets refused."""
    rules = []
    for entry in source.allowed:
        if entry.version != version:
            continue
        where = f"-d {entry.first}" if entry.first == entry.last else ""
        if not where:
            where = f"-m iprange --dst-range {entry.destination}"
        ports = entry.ports.replace("-", ":")
        rules.append(f"{key}-p {entry.protocol} {where} --dport {ports} -j RETURN")
    match, kinds = _ICMP[version]
    rules += [f"{key}{match} {kind} -j RETURN" for kind in kinds]
    rules.append(f"{key}-p tcp -j REJECT --reject-with tcp-reset")
    rules.append(f"{key}-j REJECT --reject-with {_PROHIBITED[version]}")
    return rules
