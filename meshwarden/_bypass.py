"""Apps that can be reached without their sidecar: a LISTEN socket on a non-loopback address
at a meshed workload's targetPort (e.g. an app bound to 0.0.0.0) takes connections from other
hosts that no policy ever sees. Read from /proc/net/tcp{,6} of this network namespace."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshwarden.engine import Workload

_LISTEN = "0A"


@dataclass(frozen=True, order=True)
class Bypass:
    ref: str
    port: int  # the workload port
    target_port: int
    address: str  # where the app listens

    def __str__(self) -> str:
        return (
            f"warning: {self.ref}: an app listens on {self.address} port "
            f"{self.target_port} (targetPort of port {self.port}), so other hosts reach it "
            "without its sidecar; bind the app to 127.0.0.1"
        )


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    # the kernel prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening(proc_net: Path = Path("/proc/net")) -> set[tuple[str, int]]:
    """(address, port) of every TCP LISTEN socket not bound to a loopback address."""
    found = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != _LISTEN:
                continue
            hex_address, _, hex_port = fields[1].partition(":")
            address = _address(hex_address)
            mapped = getattr(address, "ipv4_mapped", None)
            if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
                found.add((str(address), int(hex_port, 16)))
    return found


def bypasses(workloads: Iterable[Workload], sockets: set[tuple[str, int]]) -> list[Bypass]:
    """The meshed targetPorts that an app also serves on a non-loopback address (the sidecars'
    own inbound listeners, on a workload address and port, are not counted)."""
    workloads = list(workloads)
    sidecars = {(str(a), p) for w in workloads for a in w.addresses for p in w.ports}
    found = []
    for workload in workloads:
        for port in workload.ports.values():
            target = port.target_port or port.port
            apps = sorted(address for address, at in sockets - sidecars if at == target)
            found += [Bypass(workload.ref, port.port, target, address) for address in apps]
    return sorted(found)
