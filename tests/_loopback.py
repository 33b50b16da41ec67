"""Loopback ports and addresses that no other test process on this host is handed, so suites
running side by side (xdist workers, several checkouts at once) never take each other's.

`free_port` does not bind-close-and-hope: it leaves the port in TIME_WAIT (a connection the
listening side closed first), which keeps the port's bind bucket in the kernel for about a
minute. While it lasts, no bind() to port 0 and no connect() is given that port, whoever asks;
only a server that binds it by number with SO_REUSEADDR gets it — and every server these tests
start does (Envoy's listeners, asyncio and `socket.create_server`, `http.server`, grpc, etcd).
A port nothing should listen on (to see a refused connection) is taken the same way.

`claim_net` hands out 127.X.Y prefixes (/24s) from a 127.X/16 held for the life of this process
through an abstract Unix socket named after it: the kernel keeps abstract names unique per
network namespace, the same scope as the addresses, and frees the name when the process dies,
so a crashed run leaves nothing behind. Fixed addresses in tests stay in 127.0/16."""

from __future__ import annotations

import random
import socket
import threading

from meshwarden.demo import reserve_port

_NAME = "meshwarden-tests/127.{}"
_claims: list[tuple[int, socket.socket]] = []  # the 127.X/16s held until the process exits
_next = 0  # the next /24 of the last one
_blocks: list[socket.socket] = []  # the port blocks held until the process exits
_lock = threading.Lock()


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port on `address` reserved for a server that binds it with SO_REUSEADDR."""
    return reserve_port(address)


def claim_net() -> str:
    """A 127.X.Y prefix (a /24, X ≥ 1) that no other process on this host is handed while this
    one lives: the next /24 of a 127.X/16 this process holds."""
    global _next
    with _lock:
        if not _claims or _next == 256:
            _claims.append(_claim_16())
            _next = 0
        net = f"127.{_claims[-1][0]}.{_next}"
        _next += 1
        return net


def _claim_16() -> tuple[int, socket.socket]:
    for _ in range(1000):
        second, claim = random.randint(1, 254), socket.socket(socket.AF_UNIX)
        try:
            claim.bind("\0" + _NAME.format(second))
        except OSError:
            claim.close()
            continue
        return second, claim
    raise AssertionError("every 127.X/16 is held by another test process")


def claim_ports(count: int) -> int:
    """The first of `count` (≤ 100) consecutive ports on 127.0.0.1 for servers a test names by
    number: a block of 100 under the kernel's ephemeral range (no bind() to port 0 and no
    connect() is given one), held for the life of this process like `claim_net`, each port
    free when claimed."""
    assert count <= 100
    with _lock:
        for block in random.sample(range(120), 120):
            first = 20000 + block * 100
            claim = socket.socket(socket.AF_UNIX)
            try:
                claim.bind(f"\0meshwarden-tests/ports/{first}")
            except OSError:
                claim.close()
                continue
            if all(_bindable(port) for port in range(first, first + count)):
                _blocks.append(claim)
                return first
            claim.close()  # someone outside the tests listens there
    raise AssertionError("no free block of ports in 20000-31999")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Addresses:
    """One address after another from prefixes claimed on demand (for a fixture that gives
    each test an address of its own)."""

    def __init__(self) -> None:
        self._net = ""
        self._host = 254

    def next(self) -> str:
        if self._host == 254:
            self._net, self._host = claim_net(), 0
        self._host += 1
        return f"{self._net}.{self._host}"
