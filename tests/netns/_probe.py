"""Runs inside a network namespace: `serve` listens on TCP/UDP ports and answers; `probe` opens
connections (from given source addresses) and prints one outcome per target as JSON.

    python _probe.py serve tcp:22 udp:53 sctp:3868 ...  # prints "ready" once every socket is bound
    python _probe.py probe '[["tcp", "10.0.0.2", "10.0.0.1", 22], ...]'
Outcomes: "open" (connected, or a UDP/SCTP answer), "refused" (RST / ICMP unreachable / the
local filter rejected it), "silent" (nothing came back within the bound: dropped). SCTP goes
over raw sockets (`_sctp.py`).
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

import _sctp  # beside this script

BOUND = 1.0  # seconds to wait for an answer before calling a probe silent
IP_PKTINFO = 8  # Linux; python's socket module does not name it


def serve(specs: list[str]) -> None:
    selector = selectors.DefaultSelector()
    sctp_ports = {int(s.split(":")[1]) for s in specs if s.startswith("sctp:")}
    if sctp_ports:
        selector.register(_sctp.listener(), selectors.EVENT_READ)
    for spec in specs:
        protocol, port = spec.split(":")
        if protocol == "sctp":
            continue
        family = socket.AF_INET6 if protocol.endswith("6") else socket.AF_INET
        kind = socket.SOCK_STREAM if protocol.startswith("tcp") else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", int(port)))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        elif family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        selector.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock.type == socket.SOCK_RAW:
                _sctp.answer(sock, sctp_ports)
            elif sock.type == socket.SOCK_STREAM:
                conn, _ = sock.accept()
                conn.close()
            elif sock.family == socket.AF_INET:
                _echo_from_the_address_asked(sock)
            else:
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)


def _echo_from_the_address_asked(sock: socket.socket) -> None:
    """Answer a datagram from the address it was sent to (not the interface's first address),
    so the answer matches the prober's connection in conntrack."""
    data, ancillary, _flags, peer = sock.recvmsg(2048, 64)
    info = [d for level, kind, d in ancillary if (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO)]
    source = [(socket.IPPROTO_IP, IP_PKTINFO, info[0][:8] + bytes(4))] if info else []
    sock.sendmsg([data], source, 0, peer)


def probe_one(protocol: str, source: str, target: str, port: int) -> str:
    if protocol == "sctp":
        return _sctp.probe(source, target, port, BOUND)
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(BOUND)
        sock.bind((source, 0))
        try:
            if kind == socket.SOCK_STREAM:
                sock.connect((target, port))
                return "open"
            sock.connect((target, port))
            sock.send(b"meshwarden")
            sock.recv(2048)
            return "open"
        except TimeoutError:
            return "silent"
        except OSError:  # refused, unreachable, or rejected by the local output hook
            return "refused"


def main() -> None:
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    else:
        targets = json.loads(sys.argv[2])
        with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
            results = list(pool.map(lambda t: probe_one(*t), targets))
        print(json.dumps(results))


if __name__ == "__main__":
    main()
