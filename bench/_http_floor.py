"""The floor of an HTTP/1.1 ext_authz front against grpc.aio's: server CPU per request of a bare
asyncio-Protocol HTTP/1.1 keep-alive server answering 200 (plaintext and behind asyncio's TLS)
against the grpc.aio echo of bench/_engine_alone.py, same run, same load generator (h2load, 4
connections, closed loop), the server pinned to one CPU and the load on the other.

    .venv/bin/python bench/_http_floor.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import _harness as harness
from _engine_alone import Engine, _own_cpu, check_frame, h2load, run_load
from _harness import Layout, progress

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-meshwarden-decision: allow\r\n\r\n"
# what Envoy's HTTP ext_authz filter sends: the allowed headers and the ones its config adds
ENVOY_HEADERS = [
    "x-envoy-expected-rq-timeout-ms: 250",
    "x-forwarded-proto: http",
    "x-request-id: 4b0a7a7e-9d1b-4a8e-9b4b-3f1e2c3d4e5f",
    "x-meshwarden-peer: spiffe://bench.test/ns/default/sa/client",
    "x-meshwarden-source: 127.0.0.1",
    "x-meshwarden-port: 8080",
    "x-meshwarden-workload: default/server",
]


class Floor(asyncio.Protocol):
    """Answers 200 to every complete request head (no body), keep-alive; counts requests."""

    count: ClassVar[list[int]] = [0]

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4 :]
            answers += 1
        if answers:
            self.count[0] += answers
            self.transport.write(RESPONSE * answers)


def _serve_http(tls: tuple[str, str] | None, conn: Any, cpus: set[int] | None) -> None:
    import os

    if cpus:
        os.sched_setaffinity(0, cpus)
    context = None
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Floor, "127.0.0.1", 0, ssl=context)
        conn.send(server.sockets[0].getsockname()[1])
        while True:
            ask = await loop.run_in_executor(None, conn.recv)
            if ask != "stats":
                return
            conn.send((Floor.count[0], _own_cpu()))

    asyncio.run(main())


class HttpFloor:
    def __init__(self, tls: tuple[str, str] | None, cpus: set[int] | None) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve_http, args=(tls, child, cpus), daemon=True)
        self.process.start()
        self.port: int = self.conn.recv()
        self.tls = tls is not None

    def stats(self) -> tuple[int, float]:
        self.conn.send("stats")
        count, cpu = self.conn.recv()
        return count, cpu

    def stop(self) -> None:
        self.conn.send("stop")
        self.process.join(10)


def h1load(port: int, tls: bool, seconds: int, cpus: set[int] | None) -> int:
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{port}/default/server/8080/api/items?x=1"
    cmd = ["h2load", "--h1", "-c4", "-m1", f"-D{seconds}", "--warm-up-time=1", url]
    for header in ENVOY_HEADERS:
        cmd[1:1] = ["-H", header]
    done = run_load(cmd, seconds, cpus)
    found = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", done.stdout)
    if done.returncode != 0 or found is None or found.group(2) != "0":
        raise SystemExit(f"h2load --h1 failed: {done.stdout[-800:]}{done.stderr}")
    return int(found.group(1))


def _tls_files(folder: Path) -> tuple[str, str]:
    ids = harness.mint_identities(folder)
    return ids.server.certificate_chain, ids.server.private_key


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    layout = Layout.choose(True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frame = folder / "check.grpc"
        frame.write_bytes(check_frame("127.0.0.2"))
        docs = harness.mesh_documents(100, "127.0.0.2", 9999)
        servers: dict[str, Any] = {
            "grpc-echo": Engine(docs, layout.server, "grpc-echo"),
            "http-plain": HttpFloor(None, layout.server),
            "http-tls": HttpFloor(_tls_files(folder), layout.server),
        }
        totals = {name: [0, 0.0, 0] for name in servers}
        try:
            names = list(servers)
            for r in range(args.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    progress(f"round {r + 1}/{args.rounds}: {name}")
                    server = servers[name]
                    before = _stats(server)
                    if name == "grpc-echo":
                        done = h2load(server.port, frame, args.seconds, layout.others)
                    else:
                        done = h1load(server.port, server.tls, args.seconds, layout.others)
                    after = _stats(server)
                    totals[name][0] += after[0] - before[0]
                    totals[name][1] += after[1] - before[1]
                    totals[name][2] += done
        finally:
            for server in servers.values():
                server.stop()
    print("server        req/s   CPU µs/req  × grpc-echo")
    echo = totals["grpc-echo"][1] * 1e6 / max(1, totals["grpc-echo"][0])
    for name, (count, cpu, done) in totals.items():
        us = cpu * 1e6 / max(1, count)
        rate = done / (args.seconds * args.rounds)
        print(f"{name:<12} {rate:7,.0f} {us:11.1f} {us / echo:11.2f}")
    return 0


def _stats(server: Any) -> tuple[int, float]:
    if isinstance(server, Engine):
        s = server.stats()
        return s.checks, s.cpu_s
    return server.stats()


if __name__ == "__main__":
    raise SystemExit(main())
