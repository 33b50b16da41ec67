"""A NetworkPolicy rule's `ports`: numbers, ranges (`endPort`), names and protocol-only
entries, per protocol (TCP, the default; UDP; SCTP). A UDP entry never opens a TCP port."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshwarden.importers._fields import Fields
from meshwarden.importers._inventory import Pod

TRANSPORTS = ("tcp", "udp", "sctp")
_KUBE = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
PortValue = int | str  # a number or an inclusive range "N-M"
Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class NamedPort:
    """`port: NAME`: the destination pod's container port of that name and protocol."""

    name: str
    transport: str
    path: Path

    def number_on(self, pod: Pod) -> int | None:
        return pod.named_port(self.name, self.transport.upper())


@dataclass(slots=True)
class RulePorts:
    """Numeric ports by transport (None: every port of it), and the named ports."""

    numbers: dict[str, list[PortValue] | None] = field(default_factory=dict)
    named: list[NamedPort] = field(default_factory=list)

    def add(self, transport: str, port: PortValue | None) -> None:
        if port is None:
            self.numbers[transport] = None
            return
        known = self.numbers.setdefault(transport, [])
        if known is not None and port not in known:
            known.append(port)


@dataclass(frozen=True, slots=True)
class PortGroup:
    """Transports sharing one list of ports (None: every port), so `ports` x `protocols` in
    the policy language opens exactly what the NetworkPolicy opens."""

    transports: tuple[str, ...]
    ports: tuple[PortValue, ...] | None

    def fields(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.ports is not None:
            out["ports"] = list(self.ports)
        if self.transports != TRANSPORTS:
            out["protocols"] = list(self.transports)
        return out


def grouped(numbers: dict[str, list[PortValue] | None]) -> list[PortGroup]:
    """Transports with the same ports together, in the order tcp, udp, sctp."""
    groups: dict[tuple[PortValue, ...] | None, list[str]] = {}
    for transport in TRANSPORTS:
        if transport in numbers:
            ports = numbers[transport]
            groups.setdefault(None if ports is None else tuple(ports), []).append(transport)
    return [PortGroup(tuple(t), ports) for ports, t in groups.items()]


def read_ports(fields: Fields, path: Path) -> RulePorts | None:
    """A rule's `ports`: None when absent or empty (every port of every protocol)."""
    entries = fields.sequence(*path)
    if not entries:
        return None
    ports = RulePorts()
    for i, _ in enumerate(entries):
        _entry(fields, (*path, i), ports)
    return ports


def _entry(fields: Fields, path: Path, out: RulePorts) -> None:
    if fields.mapping(*path) is None:
        fields.fail(path, "a port entry must be a mapping (protocol, port, endPort)")
        return
    fields.known(path, ("protocol", "port", "endPort"))
    protocol = fields.string(*path, "protocol") or "TCP"
    if protocol not in _KUBE:
        fields.fail((*path, "protocol"), f"protocol {protocol!r} is not TCP, UDP or SCTP")
        return
    transport = _KUBE[protocol]
    port = fields.port(*path, "port")
    end = fields.integer(*path, "endPort")
    if port is None:
        if end is not None:
            fields.fail((*path, "endPort"), "endPort needs a numeric port")
        elif fields.obj.get(*path, "port") is None:
            out.add(transport, None)
    elif isinstance(port, str):
        if end is not None:
            fields.fail((*path, "endPort"), "endPort cannot be used with a named port")
        else:
            out.named.append(NamedPort(port, transport, (*path, "port")))
    elif end is None or end == port:
        out.add(transport, port)
    elif port < end <= 65535:
        out.add(transport, f"{port}-{end}")
    else:
        fields.fail((*path, "endPort"), f"endPort {end} must be between port {port} and 65535")
