"""A node's filter as `iptables-restore --noflush` input for one chain of the filter table.

iptables has no sets inside a restore file, so this form is linear: one rule per (port group,
source range). Ports that share their sources are grouped with `multiport` (at most 15 ports per
rule); sources cannot be grouped without ipset, which a restore file cannot create. The header
says how many rules that makes; above a few hundred use `render nftables` (sets and maps).

Two forms:
- the default chain MESHWARDEN for the host's INPUT (hook it once:
  `iptables -C INPUT -j MESHWARDEN || iptables -I INPUT -j MESHWARDEN`);
- `DOCKER-USER`, the chain Docker reserves for its users in FORWARD: rules apply to packets
  going out on the container-facing interface and match the connection's original destination
  port (before Docker's DNAT) with conntrack, as Docker documents. Docker's own chains are never
  touched.

Allowed packets RETURN to the calling chain (which decides as it would without meshwarden);
only what the mesh owns is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshwarden.render._filter import NodeFilter, PortRule
from meshwarden.render._ipt_egress import OUT_CHAIN, output_rules, routed_rules

DEFAULT_CHAIN = "MESHWARDEN"
DOCKER_CHAIN = "DOCKER-USER"
MULTIPORT_SLOTS = 15  # a range counts as two
ICMP_NEEDED = ("destination-unreachable", "time-exceeded", "parameter-problem")


@dataclass(frozen=True, slots=True)
class IptablesOptions:
    """Which chain to fill (MESHWARDEN for INPUT, DOCKER-USER for Docker), the address family
    and, for Docker, the container-facing interface."""

    chain: str = DEFAULT_CHAIN
    ipv6: bool = False  # render for ip6tables-restore
    interface: str = "docker0"  # container-facing interface (DOCKER-USER only)

    @property
    def docker(self) -> bool:
        return self.chain == DOCKER_CHAIN


def render_iptables(nf: NodeFilter, options: IptablesOptions = IptablesOptions()) -> str:
    """`iptables-restore --noflush` input that flushes and refills `options.chain`."""
    chain, version = options.chain, 6 if options.ipv6 else 4
    key = f"-o {options.interface} " if options.docker else ""  # traffic towards containers
    filters = [*_port_rules(nf, options, version), *_closed(nf, options, version)]
    body = [*_preamble(options), *(key + rule for rule in filters)]
    if options.docker:
        body[1:1] = routed_rules(nf.egress, version, options.interface)
        body.append("-j RETURN")
    rules = [f"-A {chain} {rule}" for rule in body]
    chains = [f":{chain} - [0:0]", f"-F {chain}", *rules]
    if not options.docker:
        out = [f"-A {OUT_CHAIN} {rule}" for rule in output_rules(nf.egress, version)]
        chains += [f":{OUT_CHAIN} - [0:0]", f"-F {OUT_CHAIN}", *out]
        rules += out
    tool = "ip6tables-restore" if options.ipv6 else "iptables-restore"
    header = [
        f"# meshwarden: packet filter of node {nf.node} (mesh version {nf.version}), IPv{version}.",
        f"# Generated; do not edit. Apply with: {tool} --noflush FILE",
        f"# {len(rules)} rules in linear chains: iptables cannot group source ranges in a "
        "restore file (no ipset); `meshwarden render nftables` uses sets instead.",
    ]
    if not options.docker:
        header.append(
            f"# Hook it once: iptables -C INPUT -j {chain} || iptables -I INPUT -j {chain}"
        )
        header.append(
            f"# and, for egress: iptables -C OUTPUT -j {OUT_CHAIN} || "
            f"iptables -I OUTPUT -j {OUT_CHAIN}"
        )
    return "\n".join([*header, "*filter", *chains, "COMMIT"]) + "\n"


def _preamble(options: IptablesOptions) -> list[str]:
    established = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    if options.docker:
        return [established, f"-i {options.interface} -j RETURN"]
    return ["-i lo -j RETURN", established]


def _port_rules(nf: NodeFilter, options: IptablesOptions, version: int) -> list[str]:
    rules: list[str] = []
    for protocol, ports, group in _groups(nf.ports, options.docker):
        sources = nf.sources_of(group, version)
        match = f"-p {protocol} {ports}"
        if group.is_open:
            rules.append(f"{match} -j RETURN")
            continue
        rules.extend(f"{match} -s {network} -j RETURN" for network in sources)
        rules.append(f"{match} -j DROP")
    return rules


def _groups(rules: tuple[PortRule, ...], docker: bool) -> list[tuple[str, str, PortRule]]:
    """(protocol, port match, a rule standing for the group) — rules sharing protocol and
    sources grouped in multiport batches (conntrack's original-port match takes one range)."""
    if docker:
        return [
            (
                r.protocol,
                f"-m conntrack --ctorigdstport {r.ports.replace('-', ':')} --ctdir ORIGINAL",
                r,
            )
            for r in rules
        ]
    batches: dict[tuple[str, object], list[list[PortRule]]] = {}
    for rule in rules:
        batch = batches.setdefault((rule.protocol, rule.sources), [[]])
        if _slots(batch[-1]) + _slots([rule]) > MULTIPORT_SLOTS:
            batch.append([])
        batch[-1].append(rule)
    found = []
    for (protocol, _), lists in batches.items():
        for members in lists:
            ports = ",".join(r.ports.replace("-", ":") for r in members)
            found.append((protocol, f"-m multiport --dports {ports}", members[0]))
    return found


def _slots(rules: list[PortRule]) -> int:
    return sum(1 if r.low == r.high else 2 for r in rules)


def _closed(nf: NodeFilter, options: IptablesOptions, version: int) -> list[str]:
    closed = [n for n in nf.closed if n.version == version] if nf.host is not None else []
    if not closed:
        return []
    if options.docker:
        return [f"-m conntrack --ctorigdst {n} -j DROP" for n in closed]
    if version == 6:
        keep = ["-p ipv6-icmp -j RETURN"]
    else:
        keep = [f"-p icmp --icmp-type {kind} -j RETURN" for kind in ICMP_NEEDED]
    return [*keep, *(f"-d {n} -j DROP" for n in closed)]
