"""The client side of bench_connection_memory, run as its own process: N sidecars (one grpc.aio
channel, hence one connection, and one SVID each), connected in two halves (the bench writes a
line in between), each opening one stream, sending its SPIFFE ID and checking that the answer
is exactly that ID; then every push's delay from the server's push to each client's receipt."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import struct
import sys
import time
from pathlib import Path

import grpc
from meshwarden.identities import SERVER_DNS_NAME

METHOD = "/bench.Echo/Stream"

TD = "bench.test"


def client_id(n: int) -> str:
    return f"spiffe://{TD}/c{n}"


async def connect(target: str, clients: int, tls: bool, stream: bool) -> None:
    pki = pickle.loads(Path(os.environ["BENCH_PKI"]).read_bytes())
    answered: list[int] = []
    wrong: list[str] = []
    channels = []  # held open until the bench kills this process
    received: dict[int, list[float]] = {}

    def got(k: int, body: bytes) -> None:
        received.setdefault(k, []).append(time.monotonic() - struct.unpack("d", body[:8])[0])
        if len(received[k]) == clients:
            delays = sorted(received[k])
            p = [delays[min(len(delays) - 1, int(q * len(delays)))] for q in (0.5, 0.99)]
            print(json.dumps({"round": k, "p50": p[0], "p99": p[1], "max": delays[-1]}))
            sys.stdout.flush()

    async def one(n: int) -> None:
        key, chain = pki["clients"][n]
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
        if tls:
            credentials = grpc.ssl_channel_credentials(pki["roots"], key, chain)
            options.append(("grpc.ssl_target_name_override", SERVER_DNS_NAME))  # type: ignore[arg-type]
            channel = grpc.aio.secure_channel(target, credentials, options)
        else:
            channel = grpc.aio.insecure_channel(target, options)
        channels.append(channel)
        await channel.channel_ready()
        if not stream:
            answered.append(n)
            return
        call = channel.stream_stream(METHOD)()
        await call.write(client_id(n).encode())
        answer = await call.read()
        if answer != client_id(n).encode():
            wrong.append(f"client {n} got {answer!r}")
            return
        answered.append(n)
        for k in range(1_000_000):
            body = await call.read()
            if body is grpc.aio.EOF:
                wrong.append(f"client {n}: stream ended before push {k}")
                return
            got(k, body)

    tasks: list[asyncio.Task[None]] = []
    for wave, end in enumerate((clients // 2, clients)):  # the bench says "next" in between
        if wave:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for n in range(len(tasks), end):
            tasks.append(asyncio.create_task(one(n)))
            if n % 50 == 49:
                await asyncio.sleep(0.05)
        for _ in range(3000):
            failed = [repr(t.exception()) for t in tasks if t.done() and t.exception()]
            if len(answered) + len(wrong) == end or failed:
                break
            await asyncio.sleep(0.1)
        print(
            json.dumps({"answered": len(answered), "wrong": (wrong + failed)[:5]}),
            flush=True,
        )
    await asyncio.Event().wait()
