"""What meshwarden's own ADS stream costs the control plane per connected sidecar, with grpc
taken out (issue #14, "control-plane memory per connected sidecar"): Python memory
(tracemalloc), asyncio tasks, and CPU per mesh-wide change.

    .venv/bin/python bench/bench_ads_stream.py                 # 1,000 streams, 5 changes
    .venv/bin/python bench/bench_ads_stream.py --streams 3000 --json

One process: a `SnapshotCache`, an `AggregatedDiscovery`, and N in-memory SotW streams (one node
each) driven through a stand-in for grpc.aio's `ServicerContext` (`read`, `write`, `abort`)
by clients that ask for CDS and LDS and ACK every response at once. Variants, same run:

- bare handler (the baseline): the same N calls, the handler only waits on `read()` — what
  any grpc.aio stream-stream handler holds with no meshwarden code;
- meshwarden ADS: every stream connected and ACKed its first config.

Memory per stream = (traced memory with N streams − before) / N, minus the baseline's. A change
= a new snapshot for every node → every stream ACKed it; its process CPU per stream is printed
with the baseline of the same run: N bare calls woken once each (one request read per stream).
The handler may be the reader/writer kind or an async generator (older meshwarden), so the
same bench measures both."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshwarden.xds import AggregatedDiscovery, SnapshotCache
from meshwarden.xds._node_auth import workload_authorizer
from meshwarden.xds._snapshot import CLUSTER, LISTENER, Resource, Snapshot

TRUST = "spiffe://example.org"


class Client:
    """One sidecar's side of one call: requests queued for `read`, every response ACKed."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.peer = f"{TRUST}/ns/{node.split('/')[0]}/sa/{node.split('/')[1]}"
        self.requests: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
        for type_url in (CLUSTER, LISTENER):
            request = DiscoveryRequest(node=Node(id=node, cluster="bench"), type_url=type_url)
            self.requests.put_nowait(request)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(f"{self.node}: {code}: {details}")

    async def read(self) -> object:
        request = await self.requests.get()
        return grpc.aio.EOF if request is None else request

    async def write(self, response: DiscoveryResponse) -> None:
        ack = DiscoveryRequest(
            type_url=response.type_url,
            response_nonce=response.nonce,
            version_info=response.version_info,
        )
        self.requests.put_nowait(ack)

    async def iterate(self) -> AsyncIterator[object]:
        while (request := await self.read()) is not grpc.aio.EOF:
            yield request


async def call(ads: AggregatedDiscovery, client: Client) -> None:
    """As grpc.aio runs a stream-stream handler of either kind."""
    handled = ads.stream(client.iterate(), client)
    if inspect.isasyncgen(handled):
        async for response in handled:
            await client.write(response)
    else:
        await handled


async def bare(client: Client) -> None:
    while await client.read() is not grpc.aio.EOF:
        pass


def snapshot(round_: int) -> Snapshot:
    return Snapshot.of(
        [
            Resource(CLUSTER, "backend", b"cluster-%d" % round_),
            Resource(LISTENER, "inbound", b"listener-%d" % round_),
        ]
    )


async def measure(streams: int, changes: int) -> dict[str, Any]:
    nodes = [f"ns{n % 50}/w{n}" for n in range(streams)]
    cache = SnapshotCache()
    first = snapshot(0)
    for node in nodes:
        cache.set_snapshot(node, first)
    clients = [Client(node) for node in nodes]
    ids = {client.node: client.peer for client in clients}
    ads = AggregatedDiscovery(
        cache, workload_authorizer(lambda: ids), cache, peer_identity=lambda context: context.peer
    )
    result: dict[str, Any] = {"streams": streams}

    # baseline: bare handlers parked on read()
    idle = [Client(node) for node in nodes]
    for client in idle:
        client.requests = asyncio.Queue()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    parked = [asyncio.create_task(bare(client)) for client in idle]
    await asyncio.sleep(0)
    result["bare_bytes"] = (tracemalloc.get_traced_memory()[0] - before) / streams
    tracemalloc.stop()
    cpu = time.process_time()
    for client in idle:
        client.requests.put_nowait(DiscoveryRequest(type_url=CLUSTER))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    result["bare_wake_us"] = (time.process_time() - cpu) / streams * 1e6
    for client in idle:
        client.requests.put_nowait(None)
    await asyncio.gather(*parked)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tasks_before = len(asyncio.all_tasks())
    calls = [asyncio.create_task(call(ads, client)) for client in clients]
    await asyncio.wait_for(cache.wait_applied(nodes), 120)
    await asyncio.sleep(0)
    result["ads_bytes"] = (tracemalloc.get_traced_memory()[0] - before) / streams
    result["tasks_per_stream"] = (len(asyncio.all_tasks()) - tasks_before) / streams
    tracemalloc.stop()

    cpu_per_change = []
    for round_ in range(1, changes + 1):
        new = snapshot(round_)
        cpu = time.process_time()
        for node in nodes:
            cache.set_snapshot(node, new)
        await asyncio.wait_for(cache.wait_applied(nodes), 120)
        cpu_per_change.append((time.process_time() - cpu) / streams * 1e6)
    result["change_us"] = sorted(cpu_per_change)[len(cpu_per_change) // 2]

    for client in clients:
        client.requests.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*calls), 60)
    result["watches_left"] = sum(getattr(cache, "watching", lambda node: 0)(n) for n in nodes)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="in-memory streams (1000)")
    parser.add_argument("--changes", type=int, default=5, help="mesh-wide changes (5)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    result = asyncio.run(measure(args.streams, args.changes))
    result["load"] = (load, os.getloadavg()[0])
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    own = (result["ads_bytes"] - result["bare_bytes"]) / 1024
    print(f"{args.streams} streams, load {load:.1f} → {result['load'][1]:.1f}")
    print(f"  bare handler (baseline): {result['bare_bytes'] / 1024:.1f} KiB per stream")
    print(f"  meshwarden ADS:          {result['ads_bytes'] / 1024:.1f} KiB per stream")
    print(f"  → meshwarden's own state: {own:.1f} KiB per stream")
    print(f"  asyncio tasks per stream: {result['tasks_per_stream']:.2f}")
    print(
        f"  CPU per stream of a change: {result['change_us']:.0f} µs "
        f"(baseline, one bare wake-up: {result['bare_wake_us']:.1f} µs; "
        f"{result['change_us'] / result['bare_wake_us']:.1f}×)"
    )
    print(f"  watches left after every stream ended: {result['watches_left']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
