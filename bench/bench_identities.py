"""Identities benchmark: X.509-SVID issuance (CSR → signed, post-mint-validated SVID) per second
on one core, and Workload API first-fetch latency with 100 concurrent workloads.

    .venv/bin/python bench/bench_identities.py          # 3 s of issuance, 5 rounds of 100 clients
    .venv/bin/python bench/bench_identities.py --quick  # 1 s, 2 rounds
    .venv/bin/python bench/bench_identities.py --json   # one JSON object for scripts

Issuance runs in this process (one core). For the Workload API the server (attesting Unix socket
→ grpc.aio) runs in a forked child process and the clients are threads here, each doing what a
workload starting up does: open a channel, call FetchX509SVID with the security header and wait
for the first message. The two processes share the machine's cores. Targets (issue #3):
≥ 2,000 SVIDs/s; first fetch p99 ≤ 20 ms. Prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cryptography
import grpc
from _harness import cpu_model
from cryptography import x509
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import hashes
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    CachedIdentity,
    CaConfig,
    CertificateAuthority,
    IdentityCache,
    LocalEndpoint,
    SystemClock,
    X509Svid,
    generate_key,
    workload_api_services,
)
from spiffe._proto import workload_pb2, workload_pb2_grpc

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


def _serve(socket_path: str, ready: Any) -> None:
    async def main() -> None:
        ca = CertificateAuthority(CaConfig(TD), SystemClock())
        key = generate_key()
        svid = ca.sign_x509_svid(key.public_key(), WORKLOAD)
        cache = IdentityCache()
        identity = CachedIdentity(WORKLOAD, ("unix:uid:0",), X509Svid(WORKLOAD, svid.chain, key))
        cache.update([identity], ca.bundle())

        async def mint(spiffe_id: SpiffeId, audience: Any) -> str:
            return ca.sign_jwt_svid(spiffe_id, audience).token

        endpoint = LocalEndpoint(Path(socket_path), workload_api_services(cache, mint, ca.clock))
        await endpoint.start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _first_fetch(target: str, barrier: threading.Barrier, out: list[float]) -> None:
    barrier.wait()
    start = time.perf_counter()
    with grpc.insecure_channel(target) as channel:
        stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),), timeout=30
        )
        response = next(stream)
        out.append(time.perf_counter() - start)
        assert response.svids, "no SVID"
        stream.cancel()


def bench_first_fetch(clients: int, rounds: int) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="meshwarden-bench-")
    socket_path = os.path.join(directory, "agent.sock")
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    server = context.Process(target=_serve, args=(socket_path, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("Workload API server did not start")
        latencies: list[float] = []
        for _ in range(rounds):
            barrier = threading.Barrier(clients)
            threads = [
                threading.Thread(
                    target=_first_fetch, args=(f"unix:{socket_path}", barrier, latencies)
                )
                for _ in range(clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
    finally:
        server.terminate()
        server.join(5)
        shutil.rmtree(directory, ignore_errors=True)
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "clients": clients,
        "samples": len(latencies),
        "p50_ms": cuts[49] * 1e3,
        "p99_ms": cuts[98] * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {
        "machine": machine(),
        "issuance": bench_issuance(1.0 if args.quick else 3.0),
        "workload_api_first_fetch": bench_first_fetch(100, 2 if args.quick else 5),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report["machine"].items():
        print(f"{key:>14}: {value}")
    issuance = report["issuance"]
    print(
        f"\nX.509-SVID issuance (CSR → signed + validated SVID, 1 core): "
        f"{issuance['svids_per_second']:,.0f}/s ({issuance['svids']} in {issuance['seconds']} s)"
    )
    fetch = report["workload_api_first_fetch"]
    print(
        f"Workload API first fetch, {fetch['clients']} concurrent clients "
        f"({fetch['samples']} samples): p50 {fetch['p50_ms']:.1f} ms, "
        f"p99 {fetch['p99_ms']:.1f} ms, max {fetch['max_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
