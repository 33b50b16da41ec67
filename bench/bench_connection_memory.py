"""Server memory per gRPC connection, by layer: what a connected sidecar costs the control plane
before meshwarden's own ADS state (issue #14, "control-plane memory per connected sidecar").

    .venv/bin/python bench/bench_connection_memory.py            # 1,000 connections per variant
    .venv/bin/python bench/bench_connection_memory.py --clients 300 --json

Per variant a bare grpc.aio server (a subprocess: one echo stream-stream method) and N client
connections from a second subprocess (a ramp of 50 per 50 ms, each channel its own connection);
the figure is the server's RSS after every client is connected (and, with a stream, has its
first answer) minus its RSS before, divided by N. Variants: plaintext HTTP/2 and grpc's TLS
(`identities.RotatingCredentials`, a client SVID each, as `server --xds-listen`), each idle
and with one open stream; and TLS with a smaller TSI frame (`grpc.tsi.max_frame_size`). The
plaintext rows are the baseline of the same run: TLS minus plaintext is what grpc's TLS holds
per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    SERVER_DNS_NAME,
    CaConfig,
    CertificateAuthority,
    RotatingCredentials,
    SystemClock,
    generate_key,
    private_key_pkcs8_pem,
)

METHOD = "/bench.Echo/Stream"
VARIANTS = {  # name → (tls, stream, extra server options)
    "plaintext, idle": (False, False, []),
    "plaintext, one stream": (False, True, []),
    "grpc TLS, idle": (True, False, []),
    "grpc TLS, one stream": (True, True, []),
    "grpc TLS, one stream, 4 KiB TSI frames": (True, True, [("grpc.tsi.max_frame_size", 4096)]),
}


def write_pki(folder: Path, clients: int) -> None:
    ca = CertificateAuthority(CaConfig(TrustDomain("bench.test")), SystemClock())
    key = generate_key()
    chain = ca.sign_server_svid(key.public_key()).chain
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in chain)
    svids = []
    for n in range(clients):
        client_key = generate_key()
        svid = ca.sign_x509_svid(
            client_key.public_key(), SpiffeId.parse(f"spiffe://bench.test/c{n}")
        )
        client_chain = b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain)
        svids.append((private_key_pkcs8_pem(client_key), client_chain))
    pki = {"key": private_key_pkcs8_pem(key), "chain": pem, "roots": ca.bundle().x509_pem()}
    (folder / "pki.pickle").write_bytes(pickle.dumps({**pki, "clients": svids}))


async def serve(folder: Path, port: int, tls: bool, options: list[tuple[str, int]]) -> None:
    pki = pickle.loads((folder / "pki.pickle").read_bytes())

    async def echo(requests: Any, context: Any) -> Any:
        async for request in requests:
            yield request

    def add(server: grpc.aio.Server) -> None:
        handler = grpc.stream_stream_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Stream": handler}),)
        )

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *map(tuple, options)])
    add(server)
    if tls:  # the credentials `server --xds-listen` uses (identities.MtlsEndpoint)
        credentials = RotatingCredentials(pki["key"], pki["chain"], pki["roots"])
        server.add_secure_port(f"127.0.0.1:{port}", credentials.server_credentials())
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def connect(folder: Path, port: int, clients: int, tls: bool, stream: bool) -> None:
    pki = pickle.loads((folder / "pki.pickle").read_bytes())
    done: list[int] = []
    target = f"127.0.0.1:{port}"

    async def one(n: int) -> None:
        key, chain = pki["clients"][n]
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
        if tls:
            credentials = grpc.ssl_channel_credentials(pki["roots"], key, chain)
            options.append(("grpc.ssl_target_name_override", SERVER_DNS_NAME))  # type: ignore[arg-type]
            channel = grpc.aio.secure_channel(target, credentials, options)
        else:
            channel = grpc.aio.insecure_channel(target, options)
        await channel.channel_ready()
        if stream:
            call = channel.stream_stream(METHOD)()
            await call.write(b"hello")
            await call.read()
        done.append(n)
        await asyncio.Event().wait()

    tasks = []
    for n in range(clients):
        tasks.append(asyncio.create_task(one(n)))
        if n % 50 == 49:
            await asyncio.sleep(0.05)
    for _ in range(3000):
        if len(done) == clients:
            break
        await asyncio.sleep(0.1)
    print(f"connected {len(done)}", flush=True)
    await asyncio.Event().wait()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def measure(folder: Path, name: str, clients: int) -> dict[str, Any]:
    tls, stream, options = VARIANTS[name]
    port = free_port()
    me = [sys.executable, __file__, "--folder", str(folder), "--port", str(port)]
    flags = ["--tls"] if tls else []
    server = subprocess.Popen(
        [*me, "--serve", json.dumps(options), *flags], stdout=subprocess.PIPE, text=True
    )
    client: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("ready")
        time.sleep(1.0)
        before = rss_kib(server.pid)
        extra = [*flags, *(["--stream"] if stream else [])]
        client = subprocess.Popen(
            [*me, "--connect", str(clients), *extra], stdout=subprocess.PIPE, text=True
        )
        assert client.stdout is not None
        connected = int(client.stdout.readline().split()[1])
        time.sleep(2.0)
        after = rss_kib(server.pid)
        return {
            "variant": name,
            "connected": connected,
            "rss_kib_before": before,
            "rss_kib_after": after,
            "kib_per_connection": (after - before) / max(connected, 1),
        }
    finally:
        for process in (client, server):
            if process is not None:
                process.kill()
                process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--connect", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.folder, args.port, args.tls, json.loads(args.serve)))
        return 0
    if args.connect is not None:
        asyncio.run(connect(args.folder, args.port, args.connect, args.tls, args.stream))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-connmem-") as work:
        folder = Path(work)
        write_pki(folder, args.clients)
        load = os.getloadavg()[0]
        rows = [measure(folder, name, args.clients) for name in VARIANTS]
    if args.json:
        print(json.dumps({"clients": args.clients, "loadavg_start": load, "rows": rows}, indent=1))
        return 0
    print(f"{args.clients} connections per variant; load average {load:.1f} at start")
    for row in rows:
        print(
            f"{row['variant']:<42} {row['kib_per_connection']:6.1f} KiB per connection "
            f"({row['connected']} connected; RSS {row['rss_kib_before'] // 1024} → "
            f"{row['rss_kib_after'] // 1024} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
