"""The simulated sidecars of bench_replica_failover: Envoy-like state-of-the-world ADS clients
that list every replica, fail over to the next one with Envoy's back-off, and record when they
are synced again (every subscribed type ACKed on the new stream)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

import grpc
from bench_propagation import (
    ADS_METHOD,
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    AdsClient,
    Propagation,
    _TypeState,
    eds_names,
    rds_names,
    wire_fields,
)
from meshwarden.identities import SERVER_DNS_NAME
from meshwarden.xds import replica_order

BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 30.0  # Envoy's ADS retry back-off
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)  # what each client subscribes to


@dataclass(frozen=True)
class Response:
    """What a client reads of a DiscoveryResponse, straight from the wire (a betterproto parse
    would cost this process more CPU than Envoy's C++ costs a sidecar)."""

    version_info: str
    type_url: str
    nonce: str
    resources: list[bytes]  # the `value` of each Any

    @classmethod
    def parse(cls, body: bytes) -> Response:
        text: dict[int, str] = {}
        resources = []
        for number, value in wire_fields(body):
            if number == 2:
                resources.append(dict(wire_fields(value)).get(2, b""))
            else:
                text[number] = value.decode()
        return cls(text.get(1, ""), text.get(4, ""), text.get(5, ""), resources)


@dataclass
class _Type(_TypeState):
    acked_here: bool = False  # ACKed a response on the current stream


class Client(AdsClient):
    """One Envoy-like SotW ADS client that fails over between replicas: `version` of each
    type is the last accepted one, sent again on a new stream as Envoy does."""

    def __init__(self, node: str, targets: list[str], credentials: Any, index: int) -> None:
        """`targets` in the order of the sidecar's bootstrap; Envoy's round robin starts at a
        random `index` of them."""
        super().__init__(node, targets[0], credentials, Propagation(0))
        self.targets = targets
        self.index = index  # the replica (in `targets` order: 0 first) it dials next
        self.types: dict[str, _TypeState] = {t: _Type() for t in TYPES}
        self.at: str | None = None  # the target of the stream it is synced on
        self.synced_at = 0.0  # perf_counter when it last became synced on a stream
        self.streams = 0
        self.answered = False
        self.begun = self.dialed = 0.0  # perf_counter: run() started; the last stream opened
        self.synced_dial = 0.0  # `dialed` of the stream it synced on

    def _acked_here(self, type_url: str) -> bool:
        state = self.types[type_url]
        return isinstance(state, _Type) and state.acked_here

    def _wanted(self) -> list[str]:
        """CDS and LDS always; EDS and RDS once names are known."""
        return [t for t in TYPES if t in (CLUSTER, LISTENER) or self.types[t].names]

    async def run(self) -> None:
        self.begun = time.perf_counter()
        failures = 0
        while True:
            target = self.targets[self.index % len(self.targets)]
            self.answered = False
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._stream(target)
            if self.answered:  # Envoy resets its back-off once a stream got a response
                failures = 0
            self.at = None
            self.index += 1
            await asyncio.sleep(random.uniform(0, min(BACKOFF_BASE_S * 2**failures, BACKOFF_MAX_S)))
            failures += 1

    async def _stream(self, target: str) -> None:
        """One stream until it ends (`answered` once it got a response)."""
        options = [("grpc.ssl_target_name_override", SERVER_DNS_NAME)]
        self.dialed = time.perf_counter()
        async with grpc.aio.secure_channel(target, self.credentials, options) as channel:
            ads = channel.stream_stream(
                ADS_METHOD, request_serializer=bytes, response_deserializer=Response.parse
            )
            call = ads()
            self.streams += 1
            for state in self.types.values():
                state.nonce = ""
                if isinstance(state, _Type):
                    state.acked_here = False
            for n, type_url in enumerate(self._wanted()):
                await call.write(self._request(type_url, first=n == 0))
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                self.answered = True
                await self._handle(call, target, response)

    async def _handle(self, call: Any, target: str, response: Response) -> None:
        state = self.types[response.type_url]
        assert isinstance(state, _Type)
        state.version, state.nonce = response.version_info, response.nonce
        await call.write(self._request(response.type_url, first=False))  # the ACK
        state.acked_here = True
        referenced = {CLUSTER: (ENDPOINT, eds_names), LISTENER: (ROUTE, rds_names)}
        if response.type_url in referenced:
            wanted, names_of = referenced[response.type_url]
            names = sorted({n for r in response.resources for n in names_of(r)})
            if names != self.types[wanted].names:
                self.types[wanted] = _Type(names, self.types[wanted].version)
                await call.write(self._request(wanted, first=False))
        if self.at is None and all(self._acked_here(t) for t in self._wanted()):
            self.at, self.synced_at = target, time.perf_counter()
            self.synced_dial = self.dialed

    def versions(self) -> tuple[str, str]:
        return self.types[LISTENER].version, self.types[CLUSTER].version


def targets(workload: str, addresses: list[str]) -> list[str]:
    """The replicas in the order the sidecar bootstrap of `workload` lists them."""
    pairs = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in addresses]
    return [f"{host}:{port}" for host, port in replica_order(workload, pairs)]
