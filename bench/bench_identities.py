"""Identities benchmark: X.509-SVID issuance (CSR → signed, post-mint-validated SVID) per second
on one core, and Workload API first-fetch latency with 100 concurrent workloads.

    .venv/bin/python bench/bench_identities.py          # 3 s of issuance, 5 rounds of 100 clients
    .venv/bin/python bench/bench_identities.py --quick  # 1 s, 2 rounds
    .venv/bin/python bench/bench_identities.py --json   # one JSON object for scripts

Issuance runs in this process (one core). For the Workload API each server runs in a forked child
process and the clients come from this one (see _first_fetch.py), each doing what a workload
starting up does: connect, call FetchX509SVID with the security header, wait for the first
message (checked: it must carry the workload's SVID). Four servers take turns, round by round:
ours (the agent's endpoint), "no front" (our servicer on grpc.aio listening on the socket itself,
no attestation), the grpc.aio floor (a response encoded in advance, nothing else) and the
asyncio floor (accept, attest the caller as ours does, write a canned HTTP/2 answer without
reading the request: what the kernel and CPython cost before any HTTP/2 or gRPC code), so the
cost of each layer shows in one run, as latency (with the p99 of each round of 100, so the spread
shows) and as the server's CPU time per connection (the scheduler's per-thread count).
Targets (issue #14): ≥ 2,000 SVIDs/s; first fetch p99 ≤ 20 ms. Prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cryptography
import grpc
from _first_fetch import (
    DATA,
    END_HEADERS,
    HEADERS,
    SETTINGS,
    STREAM,
    Fetch,
    first_fetches,
    frame,
)
from _harness import cpu_model
from cryptography import x509
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import hashes
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    CachedIdentity,
    CaConfig,
    CertificateAuthority,
    ConnectionLimits,
    IdentityCache,
    LocalEndpoint,
    SystemClock,
    X509Svid,
    generate_key,
    workload_api_services,
)
from meshwarden.identities._attestation import PeerProcess, attested_peer
from meshwarden.identities._workload_api import WorkloadApi, x509_svid_response
from meshwarden.protos import workload_pb2_grpc
from spiffe._proto import workload_pb2

from meshwarden._policies import settle_collections

TD = TrustDomain("bench.example")
WORKLOAD = SpiffeId.parse("spiffe://bench.example/ns/bench/sa/workload")


def machine() -> dict[str, Any]:
    model = cpu_model()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "grpcio": grpc.__version__,
    }


def bench_issuance(seconds: float) -> dict[str, float]:
    ca = CertificateAuthority(CaConfig(TD), SystemClock())
    keys = [generate_key() for _ in range(64)]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    csrs = [builder.sign(k, hashes.SHA256()) for k in keys]
    issued, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for csr in csrs[:16]:
            ca.sign_csr(csr, WORKLOAD)
        issued += 16
    return {"svids": issued, "seconds": round(elapsed, 3), "svids_per_second": issued / elapsed}


SERVERS = ("ours", "no front", "grpc.aio floor", "asyncio floor")
AGENT_LIMITS = ConnectionLimits()  # the agent's defaults, which "ours" runs with


def _identity_cache(ca: CertificateAuthority) -> IdentityCache:
    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), WORKLOAD)
    cache = IdentityCache()
    selectors = (f"unix:uid:{os.getuid()}",)
    identity = CachedIdentity(WORKLOAD, selectors, X509Svid(WORKLOAD, svid.chain, key))
    cache.update([identity], ca.bundle())
    return cache


async def _start_ours(socket_path: str) -> Any:
    """The agent's Workload API: the attesting endpoint serving from the identity cache."""
    ca = CertificateAuthority(CaConfig(TD), SystemClock())
    cache = _identity_cache(ca)

    async def mint(spiffe_id: SpiffeId, audience: Any) -> str:
        return ca.sign_jwt_svid(spiffe_id, audience).token

    # The agent as shipped, its per-uid rate included: a round of 100 first fetches (200
    # tokens: a connection and a call each) is within the default burst, and the rounds are
    # spaced so the bucket refills (`ROUND_GAP`).
    endpoint = LocalEndpoint(Path(socket_path), workload_api_services(cache, mint, ca.clock))
    await endpoint.start()
    settle_collections()  # as NodeAgent.start does once it serves
    return endpoint


async def _start_no_front(socket_path: str) -> Any:
    """Our Workload API servicer on grpc.aio listening on the socket itself: no relay, no
    SO_PEERCRED (every caller gets the selectors of this process's uid)."""
    ca = CertificateAuthority(CaConfig(TD), SystemClock())
    cache = _identity_cache(ca)
    selectors = frozenset({f"unix:uid:{os.getuid()}"})

    async def mint(spiffe_id: SpiffeId, audience: Any) -> str:
        return ca.sign_jwt_svid(spiffe_id, audience).token

    server = grpc.aio.server()
    servicer = WorkloadApi(cache, lambda context: selectors, mint, ca.clock)
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    settle_collections()
    return server


async def _start_floor(socket_path: str) -> Any:
    """What no grpc.aio server can go below: grpc.aio listening on the socket itself, no
    attestation, one response encoded in advance, sent to every caller."""
    cache = _identity_cache(CertificateAuthority(CaConfig(TD), SystemClock()))
    bundle = cache.bundle()
    assert bundle is not None
    response = x509_svid_response(cache.identities, bundle).SerializeToString()

    async def fetch(request: bytes, context: Any) -> Any:
        yield response
        await asyncio.Event().wait()

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(fetch)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("SpiffeWorkloadAPI", {"FetchX509SVID": handler}),)
    )
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    settle_collections()
    return server


class _CannedAnswer(asyncio.Protocol):
    """The asyncio floor's connection: attested at accept as ours are, then answered once with
    bytes prepared in advance (server SETTINGS, response HEADERS, the message) when the client's
    first bytes arrive, which are not parsed."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self.peer: PeerProcess | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = attested_peer(transport.get_extra_info("socket"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.pidfd is not None:
            self.peer.pidfd.close()

    def data_received(self, data: bytes) -> None:
        if self.transport is not None and self.answer:
            self.transport.write(self.answer)
            self.answer = b""


async def _start_asyncio_floor(socket_path: str) -> Any:
    """What no Python server on asyncio can go below: accept, attestation, a canned answer."""
    cache = _identity_cache(CertificateAuthority(CaConfig(TD), SystemClock()))
    bundle = cache.bundle()
    assert bundle is not None
    message = x509_svid_response(cache.identities, bundle).SerializeToString()
    content_type = b"\x00\x0ccontent-type\x10application/grpc"
    answer = (
        frame(SETTINGS, 0, 0)
        + frame(HEADERS, END_HEADERS, STREAM, b"\x88" + content_type)  # :status 200
        + frame(DATA, 0, STREAM, b"\x00" + len(message).to_bytes(4, "big") + message)
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: _CannedAnswer(answer), path=socket_path)
    settle_collections()
    return server


def _serve(kind: str, socket_path: str, ready: Any) -> None:
    async def main() -> None:
        start = {
            "ours": _start_ours,
            "no front": _start_no_front,
            "asyncio floor": _start_asyncio_floor,
        }.get(kind, _start_floor)
        server = await start(socket_path)
        ready.set()
        await asyncio.Event().wait()
        del server

    asyncio.run(main())


def _cpu_by_thread(pid: int) -> dict[int, int]:
    """Nanoseconds on a CPU so far of each thread of a process (/proc/PID/task/TID/schedstat:
    the scheduler's own count, where /proc/PID/stat has 10 ms ticks, too coarse for 0.1 ms
    per connection over a few hundred connections)."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that just ended
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return times


def _cpu_seconds_since(pid: int, before: dict[int, int]) -> float:
    """CPU time of a process's threads since `before` (a thread that ended meanwhile is not
    counted: the servers under test keep theirs for the whole run)."""
    after = _cpu_by_thread(pid)
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


def _checked(fetches: list[Fetch]) -> list[float]:
    """The latencies, after checking that every workload got its SVID."""
    for fetch in fetches:
        if fetch.error is not None or fetch.finished is None:
            raise RuntimeError(f"a first fetch failed: {fetch.error or 'timed out'}")
        response = workload_pb2.X509SVIDResponse.FromString(fetch.message)
        if [svid.spiffe_id for svid in response.svids] != [str(WORKLOAD)]:
            raise RuntimeError(f"a first fetch got the wrong SVIDs: {response.svids}")
    return [fetch.finished - fetch.started for fetch in fetches if fetch.finished is not None]


class _Server:
    """One server under test in a forked child process, on its own socket."""

    def __init__(self, kind: str, directory: str) -> None:
        self.kind = kind
        self.socket_path = os.path.join(directory, f"{kind.split()[0]}.sock")
        context = multiprocessing.get_context("fork")
        ready = context.Event()
        self.process = context.Process(target=_serve, args=(kind, self.socket_path, ready))
        self.process.daemon = True
        self.process.start()
        if not ready.wait(30):
            raise RuntimeError(f"the {kind} Workload API server did not start")
        self.latencies: list[float] = []
        self.round_p99s: list[float] = []  # each round's own p99
        self.cpu = 0.0

    def round(self, clients: int) -> None:
        assert self.process.pid is not None
        before = _cpu_by_thread(self.process.pid)
        latencies = _checked(first_fetches(self.socket_path, clients))
        self.cpu += _cpu_seconds_since(self.process.pid, before)
        self.latencies += latencies
        self.round_p99s.append(statistics.quantiles(latencies, n=100)[98])

    def figures(self) -> dict[str, float]:
        cuts = statistics.quantiles(self.latencies, n=100)
        return {
            "samples": len(self.latencies),
            "p50_ms": cuts[49] * 1e3,
            "p99_ms": cuts[98] * 1e3,
            "max_ms": max(self.latencies) * 1e3,
            "round_p99_min_ms": min(self.round_p99s) * 1e3,
            "round_p99_median_ms": statistics.median(self.round_p99s) * 1e3,
            "round_p99_max_ms": max(self.round_p99s) * 1e3,
            "cpu_ms_per_connection": self.cpu * 1e3 / len(self.latencies),
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)


def bench_first_fetch(clients: int, rounds: int) -> dict[str, Any]:
    """Rounds of `clients` simultaneous first fetches, taking turns between our endpoint, our
    servicer without the front, and the grpc.aio floor, so all three see the same machine load."""
    directory = tempfile.mkdtemp(prefix="meshwarden-bench-")
    servers: list[_Server] = []
    try:
        servers += [_Server(kind, directory) for kind in SERVERS]
        for _ in range(rounds):
            for server in servers:
                server.round(clients)
            time.sleep(2 * clients / AGENT_LIMITS.per_second)  # the agent's bucket refills
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    figures = {server.kind: server.figures() for server in servers}
    ours, floor = figures["ours"], figures["grpc.aio floor"]
    bare = figures["asyncio floor"]
    return {
        "clients": clients,
        **figures,
        "p99_ratio_to_floor": ours["p99_ms"] / floor["p99_ms"],
        "cpu_ratio_to_floor": ours["cpu_ms_per_connection"] / floor["cpu_ms_per_connection"],
        "floor_cpu_for_all_clients_ms": floor["cpu_ms_per_connection"] * clients,
        "cpu_above_asyncio_floor_ms": ours["cpu_ms_per_connection"] - bare["cpu_ms_per_connection"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--rounds", type=int, help="rounds of 100 first fetches per server (default 5, 2 quick)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    report = {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "issuance": bench_issuance(1.0 if args.quick else 3.0),
        "workload_api_first_fetch": bench_first_fetch(100, rounds),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report["machine"].items():
        print(f"{key:>14}: {value}")
    print(f"{'load average':>14}: {' '.join(f'{v:.2f}' for v in report['load_average'])}")
    issuance = report["issuance"]
    print(
        f"\nX.509-SVID issuance (CSR → signed + validated SVID, 1 core): "
        f"{issuance['svids_per_second']:,.0f}/s ({issuance['svids']} in {issuance['seconds']} s)"
    )
    fetch = report["workload_api_first_fetch"]
    print(f"Workload API first fetch, {fetch['clients']} workloads connecting at once:")
    for kind in SERVERS:
        f = fetch[kind]
        print(
            f"  {kind:>15}: p50 {f['p50_ms']:6.1f} ms  p99 {f['p99_ms']:6.1f} ms  "
            f"max {f['max_ms']:6.1f} ms  server CPU {f['cpu_ms_per_connection']:.3f} ms/connection"
            f"  ({f['samples']} samples)\n{'':>17}p99 of each round of {fetch['clients']}: "
            f"min {f['round_p99_min_ms']:.1f} / median {f['round_p99_median_ms']:.1f} / "
            f"max {f['round_p99_max_ms']:.1f} ms"
        )
    print(
        f"  ours / floor: p99 {fetch['p99_ratio_to_floor']:.2f}x, "
        f"CPU per connection {fetch['cpu_ratio_to_floor']:.2f}x; target p99 <= 20 ms "
        f"(the floor alone needs {fetch['floor_cpu_for_all_clients_ms']:.0f} ms of CPU "
        f"for {fetch['clients']} connections)"
    )
    print(
        f"  ours above the asyncio floor (HTTP/2, gRPC, servicer): "
        f"{fetch['cpu_above_asyncio_floor_ms']:.3f} ms of CPU per connection"
    )


if __name__ == "__main__":
    main()
