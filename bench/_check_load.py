"""A steady ext_authz load on the HTTP front, as a sidecar's filter sends it: `connections`
keep-alive mTLS connections (the sidecar's SVID), the same request head Envoy writes, at a
fixed rate, in a process of its own (spawned) so the bench's own loop does not delay it. Or,
with `LoadPlan.grpc` (a CheckRequest), gRPC Check: `connections` HTTP/2 connections (grpcio,
mTLS, ALPN h2), each call sent at its time whatever the others are doing (multiplexed, as
Envoy's gRPC client does), to the front's h2 side or to the control plane's ADS listener.

Each request has a scheduled send time; its latency is measured from that time (not from when
a busy connection got to send it), so a stall of the front shows in full on every request it
delayed. Returns (scheduled wall-clock time, latency ms, status) per request; a request still
unanswered `give_up_s` after its scheduled time, or whose connection failed, is status 0.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoadPlan:
    port: int
    chain: str
    key: str
    head: bytes
    rate: float  # requests/s over all connections
    seconds: float
    connections: int = 8
    give_up_s: float = 10.0
    grpc: bytes = b""  # a CheckRequest: gRPC Check instead of HTTP/1.1
    roots: str = ""  # ... and the trust bundle the server's certificate chains to
    metadata: tuple[tuple[str, str], ...] = ()  # ... and the call's metadata


Sample = tuple[float, float, int]  # (scheduled time.time(), latency ms, HTTP status or 0)


async def _open(plan: LoadPlan) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(plan.chain, plan.key)
    return await asyncio.open_connection("127.0.0.1", plan.port, ssl=context)


async def _ask(
    plan: LoadPlan, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[int, bool]:
    """One check: (status, whether the server closes the connection after it)."""
    writer.write(plan.head)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), plan.give_up_s)
    lower = head.lower()
    length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return int(head.split(b" ")[1]), b"connection: close" in lower


async def _connection(plan: LoadPlan, index: int, start: float, out: list[Sample]) -> None:
    """One pooled connection, as Envoy keeps it: reopened after `connection: close` or when
    the server closed it while idle; a check the connection failed under is status 0 (a
    fail-closed 403 through Envoy)."""
    interval = plan.connections / plan.rate
    connection = None
    n = 0
    while True:
        scheduled = start + index * (interval / plan.connections) + n * interval
        n += 1
        if scheduled - start > plan.seconds:
            break
        delay = scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            if connection is None or connection[0].at_eof():
                connection = await _open(plan)
            status, close = await _ask(plan, *connection)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            status, close = 0, True
        out.append((scheduled, (time.time() - scheduled) * 1000, status))
        if close and connection is not None:
            connection[1].close()
            connection = None
    if connection is not None:
        connection[1].close()


async def _grpc_connection(plan: LoadPlan, index: int, start: float, out: list[Sample]) -> None:
    """One HTTP/2 connection (its own subchannel), a call at each scheduled time; status 200
    for an allowed answer, 403 for a denied one, 0 for a call that failed (a fail-closed 403
    through Envoy)."""
    import grpc
    from envoy_data_plane.envoy.service.auth.v3 import CheckResponse

    with open(plan.chain, "rb") as chain, open(plan.key, "rb") as key, open(plan.roots, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(ca.read(), key.read(), chain.read())
    options = [
        ("grpc.ssl_target_name_override", "meshwarden-server"),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    async with grpc.aio.secure_channel(f"127.0.0.1:{plan.port}", credentials, options) as channel:
        check = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")

        verdicts: dict[bytes, int] = {}  # answer → 200 / 403 (the engine caches its answers)

        def http_status(answer: bytes) -> int:
            status = CheckResponse.parse(answer).status  # pure Python: once per distinct answer
            return 200 if status is None or status.code == 0 else 403

        async def one(scheduled: float) -> None:
            try:
                answer = await check(plan.grpc, metadata=plan.metadata, timeout=plan.give_up_s)
                code = verdicts.get(answer) or verdicts.setdefault(answer, http_status(answer))
            except grpc.aio.AioRpcError:
                code = 0
            out.append((scheduled, (time.time() - scheduled) * 1000, code))

        await channel.channel_ready()
        interval = plan.connections / plan.rate
        calls = []
        for n in itertools.count():
            scheduled = start + index * (interval / plan.connections) + n * interval
            if scheduled - start > plan.seconds:
                break
            delay = scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*calls)


async def _run(plan: LoadPlan) -> list[Sample]:
    out: list[Sample] = []
    start = time.time() + 0.5
    connection = _grpc_connection if plan.grpc else _connection
    await asyncio.gather(*(connection(plan, i, start, out) for i in range(plan.connections)))
    return sorted(out)


def _child(plan: LoadPlan, conn: Any) -> None:
    os.sched_setaffinity(0, range(os.cpu_count() or 1))  # not where the bench pinned itself
    conn.send(asyncio.run(_run(plan)))


class CheckLoad:
    """The load in a spawned process; `result()` waits for its samples."""

    def __init__(self, plan: LoadPlan) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_child, args=(plan, child), daemon=True)
        self.process.start()
        self.plan = plan

    def result(self) -> list[Sample]:
        if not self.conn.poll(self.plan.seconds + self.plan.give_up_s + 60):
            raise SystemExit("the check load did not finish")
        samples: list[Sample] = self.conn.recv()
        self.process.join(10)
        return samples
