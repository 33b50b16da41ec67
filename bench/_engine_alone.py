"""bench_ext_authz's engine process (the Check service in a process of its own) and its
engine-alone figures: the Check service driven straight over gRPC (h2load,
closed loop, no Envoy in the path), the engine process pinned to one CPU and the load on the
other, so its CPU per Check and the Checks one core answers are read without the sidecars'
share. Three servicers in the same run, interleaved:

- engine: the production `Authorization` (decode, resolve, remembered answer, span, answer);
- uncached: the same without the decision cache (every Check builds a Request and decides);
- grpc-echo: the same grpc.aio server answering a constant — the floor any Python servicer on
  grpc.aio pays per call, which our code cannot go below;
- grpc-sync-echo: the constant from grpc's synchronous server (a thread pool of one), the
  other Python gRPC server;
- engine-http: the production `Authorization` behind the HTTP/1.1 front of
  `extAuthz.transport: http` (`AuthzHttpFront`, an asyncio Protocol), driven by `h2load --h1`
  with the request head Envoy's HTTP ext_authz filter sends (checked with Envoy 1.40);
- engine-https: the same behind asyncio's TLS (production: mTLS; the per-request cost is the
  record layer, the handshake is once per pooled connection);
- http-echo: the same front answering a constant verdict — the HTTP front's own floor.

The request is a CheckRequest as Envoy's HTTP ext_authz filter sends it (peer addresses and
principals, the HTTP request with Envoy's headers and a fresh-looking request id), encoded by
envoy-data-plane; every call is the same bytes, so after the first the engine answers from its
cache — the best case, as a sidecar repeating one request sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import re
import resource
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as harness
import grpc
from _harness import CLIENT_ID, PORT, SERVER, SERVER_ID, progress
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    CheckRequest,
)
from meshwarden.engine import Effect, decide
from meshwarden.xds import (
    Authorization,
    AuthzHttpFront,
    serve_http_on_loopback,
    serve_on_loopback,
)
from meshwarden.xds._check import request_of
from meshwarden.xds._decision_cache import Decided
from meshwarden.xds._decisions import Verdict
from meshwarden.xds._ext_authz import SERVICE, _response, verdict_of
from meshwarden.xds._ext_authz_filter import CHECK_PATH, PORT_HEADER, WORKLOAD_HEADER


class TimedAuthorization(Authorization):
    """The production servicer, with the wall time of each Check handler recorded."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.handler_us: list[float] = []

    async def check(self, check: Any, context: Any) -> bytes:
        start = time.perf_counter_ns()
        answer = await super().check(check, context)
        self.handler_us.append((time.perf_counter_ns() - start) / 1000)
        return answer


class Uncached(TimedAuthorization):
    """The servicer as it was before it remembered answers: every Check decides."""

    def _decide(self, plan: Any, port: int, check: Any) -> Decided:
        request = request_of(check, plan.workload.ref, port)
        return Decided(verdict_of(plan, decide(plan, request)), request.identity)


class TimedHttpAuthorization(Authorization):
    """The production decider as the HTTP front calls it, with each answer's time recorded."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.handler_us: list[float] = []

    def answer(self, check: Any, caller: Any, metadata: Any) -> tuple[Verdict, str]:
        start = time.perf_counter_ns()
        answer = super().answer(check, caller, metadata)
        self.handler_us.append((time.perf_counter_ns() - start) / 1000)
        return answer


class Echo(TimedAuthorization):
    """gRPC's floor: the same server and handler registration, answering a constant (the
    allow answer) without reading the request — what any Python servicer costs at least."""

    async def check(self, check: Any, context: Any) -> bytes:
        self.checks += 1
        return ALLOW_ANSWER


class HttpEcho(TimedHttpAuthorization):
    """The HTTP front's floor: the request head read, the constant allow verdict answered."""

    def answer(self, check: Any, caller: Any, metadata: Any) -> tuple[Verdict, str]:
        self.checks += 1
        return ALLOW, ""


ALLOW = Verdict(Effect.ALLOW, "bench/allow-00099", 0)
ALLOW_ANSWER = _response(ALLOW, "")
SERVICERS = {
    "engine": TimedAuthorization,
    "uncached": Uncached,
    "grpc-echo": Echo,
    "grpc-sync-echo": Echo,
    "engine-http": TimedHttpAuthorization,
    "engine-https": TimedHttpAuthorization,
    "http-echo": HttpEcho,
}
ALONE = list(SERVICERS)  # the engine-alone comparison
SERVICERS["engine-mtls"] = TimedHttpAuthorization  # end to end: the front as in production
HTTP_SERVICERS = ("engine-http", "engine-https", "http-echo", "engine-mtls")


@contextlib.contextmanager
def sync_server(echo: Echo) -> Iterator[int]:
    """The constant answer from grpc's synchronous server (one worker thread): the floor of
    the other Python gRPC server, for comparison only."""

    def check(request: bytes, context: Any) -> bytes:
        echo.checks += 1
        return ALLOW_ANSWER

    handler = grpc.unary_unary_rpc_method_handler(check)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Check": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


@contextlib.contextmanager
def https_front(engine: Authorization, tls: tuple[str, str]) -> Iterator[int]:
    """The HTTP front behind asyncio's TLS. h2load presents no client certificate, so this
    context asks for none (production requires one: `serve_authz_http`); per request the cost
    is the same record layer, the handshake is once per pooled connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls)
    ready: queue.Queue[int] = queue.Queue()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        front = AuthzHttpFront(engine)
        server = await loop.create_server(front.protocol, "127.0.0.1", 0, ssl=context)
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()  # until the process ends

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    yield ready.get(timeout=10)


def _server(servicer: str, tls: tuple[str, ...] | None) -> Any:
    """How the servicer is served: grpc.aio, grpc's sync server, or the HTTP front (plaintext,
    TLS, or mTLS: (chain, key, the bundle client certificates must chain to))."""
    if servicer == "grpc-sync-echo":
        return sync_server
    if servicer not in HTTP_SERVICERS:
        return serve_on_loopback
    if servicer not in ("engine-https", "engine-mtls"):
        return serve_http_on_loopback
    assert tls is not None
    if servicer == "engine-https":
        return lambda engine: https_front(engine, (tls[0], tls[1]))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls[0], tls[1])
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(tls[2])
    return lambda engine: serve_http_on_loopback(engine, context)


def _serve_engine(
    docs: list[dict[str, Any]],
    conn: Any,
    cpus: set[int] | None,
    servicer: str = "engine",
    tls: tuple[str, ...] | None = None,
) -> None:
    """The engine process: compile the documents, serve Check, answer `stats` until `stop`."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    compiled = harness.load_mesh(docs)
    engine = SERVICERS[servicer](lambda context, metadata: compiled.plan(SERVER))
    with _server(servicer, tls)(engine) as port:
        conn.send(port)
        while conn.recv() == "stats":
            conn.send(EngineStats(engine.checks, list(engine.handler_us), _own_cpu()))


@dataclass(frozen=True)
class EngineStats:
    checks: int
    handler_us: list[float]
    cpu_s: float


class Engine:
    """`Authorization` in a process of its own (spawned: this process forks the Envoys and the
    load generators, which must not inherit gRPC's threads)."""

    def __init__(
        self,
        docs: list[dict[str, Any]],
        cpus: set[int] | None,
        servicer: str = "engine",
        tls: tuple[str, ...] | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.servicer = servicer
        self.process = context.Process(
            target=_serve_engine, args=(docs, child, cpus, servicer, tls), daemon=True
        )
        self.process.start()
        if not self.conn.poll(60):
            raise SystemExit("the engine process did not start")
        self.port: int = self.conn.recv()

    def stats(self) -> EngineStats:
        self.conn.send("stats")
        stats: EngineStats = self.conn.recv()
        return stats

    def stop(self) -> None:
        if self.process.is_alive():
            self.conn.send("stop")
            self.process.join(10)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peer(address: str, port: int, principal: str) -> AttributeContextPeer:
    socket = SocketAddress(address=address, port_value=port)
    return AttributeContextPeer(address=Address(socket_address=socket), principal=principal)


def check_frame(address: str) -> bytes:
    """One gRPC message frame carrying a CheckRequest from the bench client to the server."""
    headers = {
        ":authority": f"{address}:{PORT}",
        ":method": "GET",
        ":path": "/",
        ":scheme": "http",
        "user-agent": "wrk",
        "x-forwarded-proto": "http",
        "x-request-id": str(uuid.uuid4()),
        "x-envoy-expected-rq-timeout-ms": "15000",
    }
    http = AttributeContextHttpRequest(
        id="4613596376578547339",
        method="GET",
        headers=headers,
        path="/",
        host=f"{address}:{PORT}",
        scheme="http",
        protocol="HTTP/1.1",
    )
    attributes = AttributeContext(
        source=_peer("127.0.0.1", 43210, CLIENT_ID),
        destination=_peer(address, PORT, SERVER_ID),
        request=AttributeContextRequest(http=http),
    )
    body = bytes(CheckRequest(attributes=attributes))
    return b"\0" + len(body).to_bytes(4, "big") + body


def run_load(cmd: list[str], seconds: float, cpus: set[int] | None) -> Any:
    """A load generator's run (pinned to `cpus`), its output captured."""
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        preexec_fn=harness.child_setup(cpus),
    )


def h2load(port: int, frame: Path, seconds: int, cpus: set[int] | None) -> int:
    """Checks answered in `seconds` of closed loop (4 connections, one call at a time each)."""
    url = f"http://127.0.0.1:{port}/{SERVICE}/Check"
    headers = ["content-type: application/grpc", "te: trailers", f"{PORT_HEADER}: {PORT}"]
    cmd = ["h2load", "-c4", "-m1", f"-D{seconds}", "--warm-up-time=1", "-d", str(frame), url]
    for header in headers:
        cmd[1:1] = ["-H", header]
    done = run_load(cmd, seconds, cpus)
    found = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", done.stdout)
    if done.returncode != 0 or found is None or found.group(2) != "0" or found.group(3) != "0":
        raise SystemExit(f"h2load against the engine failed: {done.stdout[-800:]}{done.stderr}")
    return int(found.group(1))


# The request head Envoy's HTTP ext_authz filter sends (Envoy 1.40, bench_ext_authz's filter):
# h2load adds the method, path, host and its user-agent.
HTTP_CHECK_HEADERS = [
    "content-length: 0",
    f"{WORKLOAD_HEADER}: {SERVER}",
    f"{PORT_HEADER}: {PORT}",
    f"x-meshwarden-peer: ={CLIENT_ID}",
    "x-meshwarden-source: =127.0.0.1",
    "x-meshwarden-jwt: =",
    "x-envoy-internal: true",
    "x-envoy-expected-rq-timeout-ms: 250",
]


def h1load(port: int, tls: bool, seconds: int, cpus: set[int] | None) -> int:
    """HTTP checks answered 200 in `seconds` of closed loop (4 keep-alive HTTP/1.1 connections,
    one request at a time each, as Envoy's connection pool to the engine)."""
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{CHECK_PATH}/"
    cmd = ["h2load", "--h1", "-c4", "-m1", f"-D{seconds}", "--warm-up-time=1", url]
    for header in HTTP_CHECK_HEADERS:
        cmd[1:1] = ["-H", header]
    done = run_load(cmd, seconds, cpus)
    found = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", done.stdout)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx", done.stdout)
    if done.returncode != 0 or found is None or codes is None or codes.group(3) != "0":
        raise SystemExit(f"h2load --h1 against the engine failed: {done.stdout[-800:]}")
    return int(codes.group(1))


def _load(engine: Engine, frame: Path, seconds: int, cpus: set[int] | None) -> int:
    if engine.servicer in HTTP_SERVICERS:
        return h1load(engine.port, engine.servicer == "engine-https", seconds, cpus)
    return h2load(engine.port, frame, seconds, cpus)


def engine_alone(
    start: Callable[[str], Any],
    address: str,
    layout: harness.Layout,
    folder: Path,
    seconds: int,
    rounds: int,
) -> dict[str, dict[str, float]]:
    """servicer → checks/s and CPU µs per Check (engine process only), interleaved rounds."""
    frame = folder / "check.grpc"
    frame.write_bytes(check_frame(address))
    names = list(ALONE)
    engines = {name: start(name) for name in names}
    totals = {name: [0, 0.0, 0] for name in ALONE}  # checks, CPU s, h2load successes
    try:
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                progress(f"engine alone, round {r + 1}/{rounds}: {name} ({seconds} s)")
                before = engines[name].stats()
                answered = _load(engines[name], frame, seconds, layout.others)
                after = engines[name].stats()
                totals[name][0] += after.checks - before.checks
                totals[name][1] += after.cpu_s - before.cpu_s
                totals[name][2] += answered
    finally:
        for engine in engines.values():
            engine.stop()
    return {
        name: {
            "checks_per_s": answered / (seconds * rounds),
            "cpu_us_per_check": cpu * 1e6 / max(1, checks),
        }
        for name, (checks, cpu, answered) in totals.items()
    }


def print_engine_alone(alone: dict[str, dict[str, float]], seconds: int) -> None:
    echo = alone["grpc-echo"]
    print()
    print(
        f"engine alone (h2load -c4: gRPC, or --h1 for the HTTP front; no Envoy; {seconds} s per "
        "servicer; engine pinned to one CPU):"
    )
    print("  servicer         checks/s  CPU µs/check  CPU × grpc-echo")
    for name, row in alone.items():
        ratio = row["cpu_us_per_check"] / echo["cpu_us_per_check"]
        print(
            f"  {name:<14} {row['checks_per_s']:10,.0f} {row['cpu_us_per_check']:13.1f} "
            f"{ratio:16.2f}"
        )
    engine = alone["engine"]["cpu_us_per_check"]
    floor = echo["cpu_us_per_check"]
    print(
        f"  our code (engine - grpc-echo): {engine - floor:.1f} µs per Check; grpc.aio's own "
        f"per-call cost: {floor:.1f} µs ({floor / engine:.0%} of the engine's)"
    )
    if "engine-http" in alone:
        http, https = alone["engine-http"]["cpu_us_per_check"], alone["engine-https"]
        print(
            f"  HTTP front: {http:.1f} µs per check ({http / engine:.2f}× gRPC's), with TLS "
            f"{https['cpu_us_per_check']:.1f} µs: {1e6 / https['cpu_us_per_check']:,.0f} "
            "checks/s per core of CPU"
        )
