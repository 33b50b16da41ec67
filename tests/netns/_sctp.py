"""SCTP packets over raw IP sockets, for kernels without the SCTP protocol module (this one has
none: `socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)` fails with EPROTONOSUPPORT), so the packet
filter still sees real SCTP packets: an INIT from the prober, an INIT ACK back from the server.
Raw sockets get a packet only after the input hook let it through, and send through the output
hook, so what arrives is exactly what the filters passed. Checksums are CRC32c (RFC 9260,
appendix A), which conntrack verifies."""

from __future__ import annotations

import random
import socket
import struct
import time

IPPROTO_SCTP = 132
INIT, INIT_ACK = 1, 2
_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def packet(sport: int, dport: int, vtag: int, chunk: int, tag: int) -> bytes:
    """A common header and one INIT-shaped chunk (INIT or INIT ACK) with initiate tag `tag`."""
    body = struct.pack("!BBHIIHHI", chunk, 0, 20, tag, 65535, 1, 1, 1)
    blank = struct.pack("!HHII", sport, dport, vtag, 0) + body
    return blank[:8] + struct.pack("<I", crc32c(blank)) + blank[12:]


def parse(datagram: bytes) -> tuple[str, int, int, int, int, str] | None:
    """(source address, sport, dport, chunk type, initiate tag, destination address) of an
    IPv4 datagram."""
    start = (datagram[0] & 0x0F) * 4
    if len(datagram) < start + 20:
        return None
    source, destination = socket.inet_ntoa(datagram[12:16]), socket.inet_ntoa(datagram[16:20])
    sport, dport, _vtag, _sum = struct.unpack("!HHII", datagram[start : start + 12])
    chunk, _flags, _length, tag = struct.unpack("!BBHI", datagram[start + 12 : start + 20])
    return source, sport, dport, chunk, tag, destination


def raw() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)


def listener() -> socket.socket:
    """A raw socket receiving every SCTP packet; `answer` replies to one INIT."""
    sock = raw()
    sock.bind(("0.0.0.0", 0))
    return sock


def answer(sock: socket.socket, ports: set[int]) -> None:
    data, _ = sock.recvfrom(65535)
    found = parse(data)
    if found is None:
        return
    source, sport, dport, chunk, tag, destination = found
    if chunk == INIT and dport in ports:
        with raw() as reply:  # from the address the INIT was sent to, as conntrack expects
            reply.bind((destination, 0))
            ack = packet(dport, sport, tag, INIT_ACK, random.randint(1, 2**32 - 1))
            reply.sendto(ack, (source, 0))


def probe(source: str, target: str, port: int, bound: float) -> str:
    """ "open" when an INIT ACK comes back from `target`:`port` within `bound` seconds."""
    with raw() as sock:
        sock.bind((source, 0))
        sport, tag = random.randint(20000, 60000), random.randint(1, 2**32 - 1)
        try:
            sock.sendto(packet(sport, port, 0, INIT, tag), (target, 0))
        except OSError:
            return "refused"  # the output hook rejected it
        deadline = time.monotonic() + bound
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except TimeoutError:
                break
            except OSError:
                return "refused"
            found = parse(data)
            if found and found[:3] == (target, port, sport) and found[3] == INIT_ACK:
                return "open"
        return "silent"
