"""The server side of bench_connection_memory, run as its own process: a grpc.aio server (grpc's
TLS, plaintext, or behind Envoy on a Unix socket) or a grpclib server (pure Python HTTP/2 on
asyncio, behind Envoy) with one stream-stream method that answers the caller's verified SPIFFE ID
and then waits for pushes. Commands on stdin, one line each: `stats` (malloc in use, traced
Python heap), `trim` (malloc_trim), `push SIZE` (a message of SIZE bytes to every stream, its
first 8 bytes the monotonic time of the push)."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import pickle
import struct
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import grpc
from _envoy_front import XFCC, spiffe_uri_of
from grpclib.const import Cardinality, Status
from grpclib.const import Handler as GrpclibHandler
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server as GrpclibServer
from meshwarden.identities import RotatingCredentials
from meshwarden.identities import _grpc_wire as wire
from meshwarden.identities._grpc_calls import LocalServer
from meshwarden.identities._grpc_connection import GrpcConnection
from meshwarden.identities._h2_server import H2Server
from meshwarden.xds import peer_spiffe_id

SERVICE, METHOD = "bench.Echo", "Stream"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def malloc_in_use_kib() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd) // 1024


def identity(front: str, first: bytes, context: Any) -> str | None:
    """Who is calling, as the production server would learn it; None refuses the stream."""
    if front in ("plaintext", "envoy-tcp"):
        return first.decode()  # no identity to learn: echo the claim (the baseline)
    if front == "grpc":
        return peer_spiffe_id(context)
    headers = [v for k, v in context.invocation_metadata() if k == XFCC]
    return spiffe_uri_of(headers[0]) if len(headers) == 1 else None


def python_top(snapshots: list[tracemalloc.Snapshot]) -> list[tuple[str, int]]:
    """The Python heap's growth since the first call, by allocating file and line (top 12)."""
    snapshots.append(tracemalloc.take_snapshot())
    growth = snapshots[-1].compare_to(snapshots[0], "lineno")[:12]
    return [(str(stat.traceback[0]), stat.size_diff) for stat in growth]


class Pushes:
    """The pushes so far; every stream sends each one once, in order."""

    def __init__(self) -> None:
        self.events = [asyncio.Event()]
        self.payloads: list[bytes] = []

    def push(self, size: int) -> None:
        self.payloads.append(struct.pack("d", time.monotonic()).ljust(size, b"x"))
        self.events.append(asyncio.Event())
        self.events[len(self.payloads) - 1].set()

    async def next(self, k: int) -> bytes:
        await self.events[k].wait()
        return self.payloads[k]


async def grpc_aio_server(
    listen: str, front: str, options: list[tuple[str, int]], pushes: Pushes
) -> Any:
    pki = pickle.loads(Path(os.environ["BENCH_PKI"]).read_bytes())

    async def stream(requests: Any, context: Any) -> None:
        first = await context.read()
        caller = identity(front, first, context)
        if caller is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no verified identity")
        await context.write(caller.encode())
        for k in range(1_000_000):
            await context.write(await pushes.next(k))

    handler = grpc.stream_stream_rpc_method_handler(stream)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *map(tuple, options)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )
    if front == "grpc":  # the credentials `server --xds-listen` uses (identities.MtlsEndpoint)
        credentials = RotatingCredentials(pki["key"], pki["chain"], pki["roots"])
        server.add_secure_port(listen, credentials.server_credentials())
    else:
        server.add_insecure_port(listen)
    await server.start()
    return server


class _Bytes(CodecBase):
    __content_subtype__ = "proto"  # what grpc's clients send; the bodies stay bytes

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


async def grpclib_server(listen: str, pushes: Pushes) -> Any:
    """Behind Envoy only: the identity is Envoy's `x-forwarded-client-cert`."""

    async def stream(call: Any) -> None:
        await call.recv_message()
        headers = call.metadata.getall(XFCC, [])
        caller = spiffe_uri_of(headers[0]) if len(headers) == 1 else None
        if caller is None:
            raise GRPCError(Status.PERMISSION_DENIED, "no verified identity")
        await call.send_message(caller.encode())
        for k in range(1_000_000):
            await call.send_message(await pushes.next(k))

    class Echo:
        def __mapping__(self) -> dict[str, GrpclibHandler]:
            path = f"/{SERVICE}/{METHOD}"
            return {path: GrpclibHandler(stream, Cardinality.STREAM_STREAM, None, None)}

    server = GrpclibServer([Echo()], codec=_Bytes())
    await server.start(path=listen.removeprefix("unix:"))
    return server


async def own_h2_server(listen: str, pushes: Pushes) -> Any:
    """meshwarden's own sans-IO HTTP/2 gRPC server (the agent's, identities._grpc_connection)
    behind Envoy: the identity is Envoy's `x-forwarded-client-cert`."""

    async def stream(requests: Any, context: Any) -> Any:
        await anext(requests)
        headers = [v for k, v in context.invocation_metadata() if k == XFCC]
        caller = spiffe_uri_of(headers[0]) if len(headers) == 1 else None
        if caller is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no verified identity")
        yield caller.encode()
        for k in range(1_000_000):
            yield await pushes.next(k)

    server = LocalServer()
    handler = grpc.stream_stream_rpc_method_handler(stream)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )

    class Connection(GrpcConnection):
        def __init__(self) -> None:
            super().__init__(server)  # every stream over Envoy's one connection
            self.h2 = H2Server(window=wire.MAX_MESSAGE + 5, max_streams=100_000)

    path = listen.removeprefix("unix:")
    return await asyncio.get_running_loop().create_unix_server(Connection, path)


async def serve(
    listen: str, front: str, options: list[tuple[str, int]], trace: bool, kind: str
) -> None:
    if trace:
        tracemalloc.start()
    pushes = Pushes()
    if kind == "grpclib":
        server = await grpclib_server(listen, pushes)
    elif kind == "own":
        server = await own_h2_server(listen, pushes)
    else:
        server = await grpc_aio_server(listen, front, options, pushes)
    print("ready", flush=True)
    snapshots: list[tracemalloc.Snapshot] = []
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = line.split()
        if command[0] == "stats":
            stats: dict[str, Any] = {
                "malloc_kib": malloc_in_use_kib(),
                "traced_kib": None,
            }
            if trace:
                stats["traced_kib"] = tracemalloc.get_traced_memory()[0] // 1024
                stats["top"] = python_top(snapshots)
            print(json.dumps(stats))
        elif command[0] == "trim":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            print("trimmed")
        elif command[0] == "push":
            pushes.push(int(command[1]))
            print("pushed")
        sys.stdout.flush()
    del server
